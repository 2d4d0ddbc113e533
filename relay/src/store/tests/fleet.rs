//! The paginated agents list, the metrics history and the overview counts.

use super::*;
use crate::model::metrics::{COARSE, FINE};
use flotilla_shared::heartbeat::{FilesystemUsage, HostMetrics};

/// Every agent in `order`, read page by page with `limit` rows per store call.
async fn walk(store: &Store, order: AgentOrder, revoked: Option<bool>, limit: u32) -> Vec<String> {
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .agent_keys(order, after.clone(), revoked, limit)
            .await
            .unwrap();
        assert!(page.len() <= limit as usize);
        let done = page.len() < limit as usize;
        if let Some(last) = page.last() {
            after = Some(last.position.clone());
        }
        seen.extend(page.into_iter().map(|k| k.id));
        if done {
            return seen;
        }
    }
}

fn ids<K>(v: &[(K, String)]) -> Vec<String> {
    v.iter().map(|(_, id)| id.clone()).collect()
}

#[tokio::test]
async fn keyset_pages_walk_every_order_once_with_ties_broken_by_id() {
    let store = Store::open_for_test();
    token(&store, "t", 3600, 100, "").await;
    // Duplicate names: the order must still be total.
    let mut agents = Vec::new();
    for name in ["web", "db", "web", "cache", "db", "web", "api"] {
        agents.push(enroll_ok(&store, "t", new_agent(name, "")).await);
    }
    store.revoke_agent(agents[1].id.clone()).await.unwrap();

    let mut by_name: Vec<_> = agents
        .iter()
        .map(|a| (a.name.clone(), a.id.clone()))
        .collect();
    by_name.sort();
    let mut by_enrolled: Vec<_> = agents
        .iter()
        .map(|a| (a.enrolled_at, a.id.clone()))
        .collect();
    by_enrolled.sort();
    for limit in [1, 2, 3, 100] {
        assert_eq!(
            walk(&store, AgentOrder::Name, None, limit).await,
            ids(&by_name)
        );
        let mut desc = ids(&by_name);
        desc.reverse();
        assert_eq!(walk(&store, AgentOrder::NameDesc, None, limit).await, desc);
        assert_eq!(
            walk(&store, AgentOrder::Enrolled, None, limit).await,
            ids(&by_enrolled)
        );
        let mut newest = ids(&by_enrolled);
        newest.reverse();
        assert_eq!(
            walk(&store, AgentOrder::EnrolledDesc, None, limit).await,
            newest
        );
    }
    let revoked = walk(&store, AgentOrder::Name, Some(true), 2).await;
    assert_eq!(revoked, vec![agents[1].id.clone()]);
    let live = walk(&store, AgentOrder::Name, Some(false), 2).await;
    assert_eq!(live.len(), agents.len() - 1);
    assert!(!live.contains(&agents[1].id));

    // Full records come back in the order asked for; unknown ids are left out.
    let want = vec![agents[3].id.clone(), "ag_nope".into(), agents[0].id.clone()];
    let got = store.agents_by_ids(want).await.unwrap();
    assert_eq!(
        got.iter().map(|a| a.id.as_str()).collect::<Vec<_>>(),
        [agents[3].id.as_str(), agents[0].id.as_str()]
    );
    assert_eq!(got[0].name, "cache");
}

fn heartbeat(cpu: f32, memory_used: u64, disk: f32) -> Heartbeat {
    let fs = |used: f32| FilesystemUsage {
        mount_point: "/".into(),
        device: "/dev/vda1".into(),
        fs_type: "ext4".into(),
        total_bytes: 100,
        available_bytes: 100 - used as u64,
        used_percent: used,
    };
    Heartbeat {
        at: now(),
        agent_version: "0.2.0".into(),
        host: HostMetrics {
            cpu_percent: cpu,
            memory_total_bytes: 1000,
            memory_used_bytes: memory_used,
            filesystems: vec![fs(disk / 2.0), fs(disk)],
            ..HostMetrics::default()
        },
        docker: Default::default(),
        backup: None,
        compose_drift: Vec::new(),
    }
}

#[tokio::test]
async fn heartbeats_fold_into_bounded_means_that_age_out() {
    let store = Store::open_for_test();
    token(&store, "t", 3600, 5, "").await;
    let a = enroll_ok(&store, "t", new_agent("a", "")).await;
    let b = enroll_ok(&store, "t", new_agent("b", "")).await;
    // 1_800_000_000 is on the hour: the start of a bucket of both resolutions.
    let t0 = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
    let write = |agent: &str, at: DateTime<Utc>, hb: Heartbeat| HeartbeatWrite {
        agent_id: agent.to_string(),
        heartbeat: Arc::new(hb),
        received_at: at,
    };
    let secs = chrono::Duration::seconds;
    // Three heartbeats in the first 5 minutes (one batch each, as the flusher writes them),
    // one in the next; b's never mix with a's.
    for (at, cpu, mem, disk) in [
        (t0, 10.0, 100, 20.0),
        (t0 + secs(60), 20.0, 200, 30.0),
        (t0 + secs(299), 60.0, 600, 70.0),
        (t0 + secs(300), 90.0, 900, 90.0),
    ] {
        store
            .save_heartbeats(vec![
                write(&a.id, at, heartbeat(cpu, mem, disk)),
                write(&b.id, at, heartbeat(1.0, 10, 1.0)),
            ])
            .await
            .unwrap();
    }
    let fine = store
        .metrics_history(a.id.clone(), FINE, t0 + secs(600))
        .await
        .unwrap();
    assert_eq!(fine.len(), 2, "{fine:?}");
    assert_eq!(fine[0].at, t0);
    assert_eq!(fine[0].samples, 3);
    assert!((fine[0].cpu_percent - 30.0).abs() < 1e-4, "{fine:?}");
    assert!((fine[0].memory_used_percent - 30.0).abs() < 1e-4);
    // The fullest filesystem counts.
    assert!((fine[0].disk_max_used_percent - 40.0).abs() < 1e-4);
    assert_eq!(fine[1].at, t0 + secs(300));
    assert_eq!(fine[1].samples, 1);
    let coarse = store
        .metrics_history(a.id.clone(), COARSE, t0 + secs(600))
        .await
        .unwrap();
    assert_eq!(coarse.len(), 1);
    assert_eq!(coarse[0].samples, 4);
    assert!((coarse[0].cpu_percent - 45.0).abs() < 1e-4);

    // Past 24 hours the fine points are out of the window and pruned; the hourly ones stay
    // for 30 days.
    let day_later = t0 + chrono::Duration::hours(25);
    assert!(store
        .metrics_history(a.id.clone(), FINE, day_later)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        store.prune_metrics(day_later).await.unwrap(),
        4,
        "2 agents × 2 fine points"
    );
    assert_eq!(
        store
            .metrics_history(a.id.clone(), COARSE, day_later)
            .await
            .unwrap()
            .len(),
        1
    );
    let month_later = t0 + chrono::Duration::days(31);
    assert_eq!(store.prune_metrics(month_later).await.unwrap(), 2);
    assert!(store
        .metrics_history(b.id.clone(), COARSE, t0)
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn fleet_counts_count_agents_updates_and_firing_alerts() {
    let store = Store::open_for_test();
    let empty = store.fleet_counts(now()).await.unwrap();
    assert_eq!(empty, crate::store::fleet::FleetCounts::default());
    token(&store, "t", 3600, 5, "").await;
    enroll_ok(&store, "t", new_agent("a", "")).await;
    enroll_ok(&store, "t", new_agent("b", "")).await;
    let c = enroll_ok(&store, "t", new_agent("c", "")).await;
    store.revoke_agent(c.id.clone()).await.unwrap();
    let counts = store.fleet_counts(now()).await.unwrap();
    assert_eq!((counts.enrolled, counts.revoked), (2, 1));
    assert_eq!((counts.updating, counts.rolled_back), (0, 0));
    // Updates are counted in the update-history test (store/tests/updates.rs), alerts in the
    // API test of the overview.
}
