//! Which labels an enrolling agent gets (review finding 11): whoever holds an enrollment token
//! must not be able to place a machine into any part of the fleet. The token's labels always
//! win; of the labels the agent asks for, only those whose key the token lists in
//! `agent_label_keys` are added (`*`: any key, which is also how tokens made before the list
//! existed behave). Everything the agent asked for is kept as its claimed labels, shown apart.

use flotilla_shared::api::ANY_LABEL_KEY;
use flotilla_shared::selector::Labels;

/// The labels of an agent enrolling with a token that sets `token` and allows `allowed_keys`,
/// having asked for `claimed`.
pub fn enrolled_labels(token: &Labels, allowed_keys: &[String], claimed: &Labels) -> Labels {
    let any = allowed_keys.iter().any(|k| k == ANY_LABEL_KEY);
    let mut labels: Labels = claimed
        .iter()
        .filter(|(k, _)| any || allowed_keys.contains(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    labels.extend(token.iter().map(|(k, v)| (k.clone(), v.clone())));
    labels
}

/// The asked-for labels the agent did not get as asked.
pub fn ignored_labels(claimed: &Labels, applied: &Labels) -> Labels {
    claimed
        .iter()
        .filter(|(k, v)| applied.get(*k) != Some(*v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_shared::selector::parse_labels;

    #[test]
    fn the_token_decides_and_claims_need_an_allowed_key() {
        let token = parse_labels("env=staging").unwrap();
        let claimed = parse_labels("env=prod,region=us,rack=7").unwrap();
        let none = enrolled_labels(&token, &[], &claimed);
        assert_eq!(none, token, "no key allowed: the token's labels only");
        assert_eq!(ignored_labels(&claimed, &none), claimed);
        let rack = enrolled_labels(&token, &["rack".into(), "env".into()], &claimed);
        assert_eq!(
            rack,
            parse_labels("env=staging,rack=7").unwrap(),
            "env stays the token's"
        );
        assert_eq!(
            ignored_labels(&claimed, &rack),
            parse_labels("env=prod,region=us").unwrap()
        );
        let any = enrolled_labels(&token, &[ANY_LABEL_KEY.into()], &claimed);
        assert_eq!(any, parse_labels("env=staging,region=us,rack=7").unwrap());
    }
}
