//! Enrollment tokens and the labels they give (review finding 11), on both backends.

use super::*;

/// Review finding 11: a token fixes the labels; the agent adds only the keys it allows, and
/// what it asked for is stored apart. A token from before the setting existed (NULL) lets the
/// agent add any key, as then.
#[tokio::test]
async fn an_enrollment_token_limits_the_label_keys_an_agent_may_add() {
    let store = Store::open_for_test();
    let created_at = now();
    let keyed = |secret: &str, keys: Vec<String>| NewEnrollmentToken {
        id: new_id("et"),
        token_hash: token_hash(secret),
        labels: labels("tier=build"),
        created_at,
        expires_at: created_at + chrono::Duration::seconds(600),
        max_uses: 5,
        note: None,
        created_by: "test".into(),
        agent_label_keys: keys,
    };
    store
        .create_enrollment_token(keyed("none", vec![]))
        .await
        .unwrap();
    let zone = store
        .create_enrollment_token(keyed("zone", vec!["zone".into()]))
        .await
        .unwrap();
    assert_eq!(zone.agent_label_keys, vec!["zone".to_string()]);
    let a = enroll_ok(&store, "none", new_agent("a", "tier=web,env=prod")).await;
    assert_eq!(a.labels, labels("tier=build"));
    let b = enroll_ok(&store, "zone", new_agent("b", "tier=web,zone=1,env=prod")).await;
    assert_eq!(b.labels, labels("tier=build,zone=1"));
    let stored = store.agent(b.id.clone()).await.unwrap().unwrap();
    assert_eq!(stored.labels, labels("tier=build,zone=1"));
    assert_eq!(stored.claimed_labels, labels("tier=web,zone=1,env=prod"));
    let listed = store.agents().await.unwrap();
    assert!(listed
        .iter()
        .any(|r| r.id == a.id && r.claimed_labels == labels("tier=web,env=prod")));
    // A token made before the column existed.
    let legacy = store
        .create_enrollment_token(keyed("legacy", vec![]))
        .await
        .unwrap();
    store
        .write(move |c| {
            c.execute(
                "UPDATE enrollment_tokens SET agent_label_keys = NULL WHERE id = ?1",
                params![legacy.id],
            )?;
            Ok(())
        })
        .await
        .unwrap();
    let tokens = store.list_enrollment_tokens().await.unwrap();
    assert!(tokens
        .iter()
        .any(|t| t.agent_label_keys == vec![flotilla_shared::api::ANY_LABEL_KEY.to_string()]));
    let c = enroll_ok(&store, "legacy", new_agent("c", "tier=web,env=prod")).await;
    assert_eq!(c.labels, labels("tier=build,env=prod"));
}
