//! Membership, routes and leases (`store/cluster.rs`), on both backends.

use super::*;
use crate::store::cluster::Fence;

fn secs(n: i64) -> chrono::Duration {
    chrono::Duration::seconds(n)
}

#[tokio::test]
async fn a_lease_has_one_holder_and_a_takeover_raises_the_epoch() {
    let store = Store::open_for_test();
    let t0 = now();
    let lease = |holder: &str, at: DateTime<Utc>| {
        store.acquire_lease("rollouts".into(), holder.into(), at, at + secs(12))
    };
    assert_eq!(lease("relay_a", t0).await.unwrap(), Some(1));
    // Held: another relay cannot take it, the holder renews it with the same epoch.
    assert_eq!(lease("relay_b", t0 + secs(5)).await.unwrap(), None);
    assert_eq!(lease("relay_a", t0 + secs(3)).await.unwrap(), Some(1));
    // Run out (last renewal at t0+3, so until t0+15): taken over with the next epoch.
    assert_eq!(lease("relay_b", t0 + secs(14)).await.unwrap(), None);
    assert_eq!(lease("relay_b", t0 + secs(16)).await.unwrap(), Some(2));
    assert_eq!(lease("relay_a", t0 + secs(17)).await.unwrap(), None);
    // Released on purpose: the next relay need not wait.
    store
        .release_lease("rollouts".into(), "relay_b".into())
        .await
        .unwrap();
    assert_eq!(lease("relay_a", t0 + secs(18)).await.unwrap(), Some(3));
    let leases = store.leases().await.unwrap();
    assert_eq!(leases.len(), 1);
    assert_eq!((leases[0].holder.as_str(), leases[0].epoch), ("relay_a", 3));
}

#[tokio::test]
async fn a_write_fenced_by_a_stale_epoch_is_refused_and_changes_nothing() {
    let store = Store::open_for_test();
    let t0 = now();
    let until = t0 + secs(12);
    let a = store
        .acquire_lease("alerts".into(), "relay_a".into(), t0, until)
        .await
        .unwrap()
        .unwrap();
    let fence_a = Fence {
        lease: "alerts".into(),
        holder: "relay_a".into(),
        epoch: a,
    };
    // The holder's fenced writes go through.
    fence_a
        .clone()
        .scope(store.prune_alerts(t0))
        .await
        .expect("the holder writes");
    // relay_a is partitioned; its lease runs out and relay_b takes over.
    let b = store
        .acquire_lease("alerts".into(), "relay_b".into(), until, until + secs(12))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(b, a + 1);
    let refused = fence_a.scope(store.prune_alerts(t0)).await;
    assert!(
        matches!(&refused, Err(StoreError::Fenced { lease, epoch }) if lease == "alerts" && *epoch == a),
        "{refused:?}"
    );
    // Unfenced writes (the cluster's bookkeeping, API writes) are not affected.
    store.prune_alerts(t0).await.expect("unfenced write");
    let fence_b = Fence {
        lease: "alerts".into(),
        holder: "relay_b".into(),
        epoch: b,
    };
    fence_b
        .scope(store.prune_alerts(t0))
        .await
        .expect("the new holder writes");
}

#[tokio::test]
async fn routes_follow_connections_and_die_with_their_relay() {
    let store = Store::open_for_test();
    let t0 = now();
    let seen = |relay: &str, at: DateTime<Utc>| RelayRow {
        relay_id: relay.into(),
        started_at: t0,
        seen_at: at,
        version: "0.1.0".into(),
        address: "127.0.0.1:1".into(),
    };
    store.relay_seen(seen("relay_a", t0)).await.unwrap();
    store.relay_seen(seen("relay_b", t0)).await.unwrap();
    let route = |agent: &str, relay: &str, at: DateTime<Utc>| Route {
        agent_id: agent.into(),
        relay_id: relay.into(),
        connected_at: at,
        agent_version: "0.1.0".into(),
    };
    store
        .route_connected(route("ag_1", "relay_b", t0))
        .await
        .unwrap();
    store
        .route_connected(route("ag_2", "relay_a", t0))
        .await
        .unwrap();
    let remote = store.remote_routes("relay_a".into(), t0).await.unwrap();
    assert_eq!(remote, vec![route("ag_1", "relay_b", t0)]);
    // ag_1 moves to relay_a; relay_b's late disconnect of its old connection changes nothing.
    let t1 = t0 + secs(1);
    store
        .route_connected(route("ag_1", "relay_a", t1))
        .await
        .unwrap();
    store
        .route_disconnected("ag_1".into(), "relay_b".into(), t0)
        .await
        .unwrap();
    let from_b = store.remote_routes("relay_b".into(), t0).await.unwrap();
    assert_eq!(from_b.len(), 2, "{from_b:?}");
    let mut own = store.own_routes("relay_a".into()).await.unwrap();
    own.sort();
    assert_eq!(
        own,
        vec![("ag_1".to_string(), t1), ("ag_2".to_string(), t0)]
    );
    assert!(store.own_routes("relay_b".into()).await.unwrap().is_empty());
    // relay_a stops being seen: it and its routes are forgotten.
    store
        .relay_seen(seen("relay_b", t0 + secs(30)))
        .await
        .unwrap();
    assert_eq!(store.forget_dead_relays(t0 + secs(15)).await.unwrap(), 1);
    assert!(store
        .remote_routes("relay_b".into(), t0)
        .await
        .unwrap()
        .is_empty());
    let live = store.live_relays(t0 + secs(15)).await.unwrap();
    assert_eq!(live.len(), 1);
    assert_eq!(live[0].relay_id, "relay_b");
}

#[tokio::test]
async fn queued_deliveries_are_found_through_the_routing_table() {
    let store = Store::open_for_test();
    let secret = "et_cluster_secret";
    token(&store, secret, 3600, 10, "role=web").await;
    let a = enroll_ok(&store, secret, new_agent("web-1", "role=web")).await;
    let b = enroll_ok(&store, secret, new_agent("web-2", "role=web")).await;
    let c = command(
        "cmd_cluster",
        vec![
            (a.id.clone(), DeliveryState::Queued),
            (b.id.clone(), DeliveryState::Queued),
        ],
        600,
    );
    store.create_command(c).await.unwrap();
    let t0 = now();
    store
        .relay_seen(RelayRow {
            relay_id: "relay_b".into(),
            started_at: t0,
            seen_at: t0,
            version: "0.1.0".into(),
            address: "127.0.0.1:1".into(),
        })
        .await
        .unwrap();
    store
        .route_connected(Route {
            agent_id: b.id.clone(),
            relay_id: "relay_b".into(),
            connected_at: t0,
            agent_version: "0.1.0".into(),
        })
        .await
        .unwrap();
    let queued = store.queued_for_relay("relay_b".into()).await.unwrap();
    assert_eq!(queued.len(), 1);
    assert_eq!(
        (queued[0].0.as_str(), queued[0].2.as_str()),
        ("cmd_cluster", b.id.as_str())
    );
    let (_, targets) = store
        .queued_targets("cmd_cluster".into())
        .await
        .unwrap()
        .expect("unexpired");
    assert_eq!(targets.len(), 2);
    store
        .mark_sent("cmd_cluster".into(), vec![b.id.clone()])
        .await
        .unwrap();
    assert!(store
        .queued_for_relay("relay_b".into())
        .await
        .unwrap()
        .is_empty());
}

/// Two relays race for one lease at its expiry, round after round, started together (the
/// holder of the last round is gone, the other two of three relays race to take over): exactly
/// one wins each round, the epoch rises by one every round, and the old holder's epoch can no
/// longer write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relays_racing_for_a_lease_never_both_hold_it() {
    const ROUNDS: i64 = 40;
    const RELAYS: [&str; 3] = ["relay_a", "relay_b", "relay_c"];
    let store = Store::open_for_test();
    let t0 = now();
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(2));
    let mut previous: Option<(&str, i64)> = None;
    let mut wins = std::collections::BTreeMap::new();
    for round in 0..ROUNDS {
        // Each round starts after the previous lease ran out (held 12 s, rounds 20 s apart).
        let at = t0 + secs(20 * round);
        let race = |holder: &'static str| {
            let (store, barrier) = (store.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                let got = store
                    .acquire_lease("race".into(), holder.into(), at, at + secs(12))
                    .await
                    .expect("acquire_lease");
                (holder, got)
            })
        };
        let contenders: Vec<&'static str> = RELAYS
            .into_iter()
            .filter(|r| previous.map(|(h, _)| h) != Some(*r))
            .take(2)
            .collect();
        let (x, y) = (race(contenders[0]), race(contenders[1]));
        let results = [x.await.unwrap(), y.await.unwrap()];
        let winners: Vec<(&str, i64)> = results
            .iter()
            .filter_map(|(h, got)| got.map(|e| (*h, e)))
            .collect();
        assert_eq!(winners.len(), 1, "round {round}: {results:?}");
        let (holder, epoch) = winners[0];
        *wins.entry(holder).or_insert(0) += 1;
        assert_eq!(epoch, previous.map_or(1, |(_, e)| e + 1), "round {round}");
        if let Some((old, old_epoch)) = previous {
            // The former holder's epoch is fenced off.
            let stale = Fence {
                lease: "race".into(),
                holder: old.into(),
                epoch: old_epoch,
            };
            let refused = stale.scope(store.prune_alerts(at)).await;
            assert!(
                matches!(&refused, Err(StoreError::Fenced { epoch, .. }) if *epoch == old_epoch),
                "round {round}: {refused:?}"
            );
        }
        let fresh = Fence {
            lease: "race".into(),
            holder: holder.into(),
            epoch,
        };
        fresh
            .scope(store.prune_alerts(at))
            .await
            .expect("the winner writes");
        previous = Some((holder, epoch));
    }
    let leases = store.leases().await.unwrap();
    let (holder, epoch) = previous.unwrap();
    assert_eq!(
        (leases[0].holder.as_str(), leases[0].epoch),
        (holder, epoch)
    );
    assert_eq!(epoch, ROUNDS);
    eprintln!("{ROUNDS} raced takeovers, won: {wins:?}");
}

#[tokio::test]
async fn a_newer_schema_is_run_on_only_when_it_keeps_this_relay_compatible() {
    use crate::store::postgres::runs_on;
    // Known 16: an older or equal schema runs; a newer one runs while it is compatible.
    assert!(runs_on(15, 15, 16).is_ok());
    assert!(runs_on(16, 15, 16).is_ok());
    assert!(runs_on(17, 16, 16).is_ok());
    let err = runs_on(18, 17, 16).unwrap_err();
    assert_eq!(
        err.to_string(),
        "database schema version 18 is newer than this relay understands (16), and runs only \
         relays that know schema 17 or newer: upgrade this relay"
    );

    let store = Store::open_for_test();
    assert!(store.check_schema().await.is_ok());
    if !store.is_shared() {
        return; // one relay owns its SQLite file: nobody else migrates it
    }
    let bump = |sql: &'static str| {
        let store = store.clone();
        async move {
            store
                .write_unfenced(move |c| Ok(c.execute(sql, params![])?))
                .await
                .unwrap();
        }
    };
    bump("UPDATE flotilla_schema SET version = version + 1").await;
    assert!(store.check_schema().await.is_ok());
    bump("UPDATE flotilla_schema SET compatible_from = version").await;
    let err = store.check_schema().await.unwrap_err();
    assert!(matches!(err, StoreError::TooNew { .. }), "{err}");
}
