//! The coordinator: one leader at a time (elected through etcd), which keeps every
//! collection shard assigned to one live data node (its primary) and to
//! `replicaNumber` live query nodes, moves shards off nodes whose lease expired, and
//! balances replicas when query nodes join.
//!
//! Election: the leader holds `P/coordinator`, attached to its lease; the others try to
//! create that key (a transaction that succeeds only when it is absent) each round. When
//! the leader dies its lease expires, the key goes, and the next round elects another.

use crate::error::Result;
use crate::meta::{Assignment, CollectionRecord, Meta, NodeInfo, Role};
use std::collections::{BTreeMap, HashMap};

/// One round: campaign if there is no leader; if this node leads, reconcile assignments.
/// Returns whether this node is the leader.
pub async fn round(meta: &Meta, me: &str, lease: i64) -> Result<bool> {
    let (leader, rev) = meta.get::<String>("coordinator").await?;
    let leading = match leader {
        Some(l) => l == me,
        None => {
            let won = meta
                .put_if("coordinator", &me.to_string(), rev, Some(lease))
                .await?;
            if won {
                tracing::info!(node = me, "elected coordinator");
            }
            won
        }
    };
    if leading {
        assign(meta).await?;
    }
    Ok(leading)
}

/// Computes and writes the assignments.
pub async fn assign(meta: &Meta) -> Result<()> {
    let nodes: BTreeMap<String, NodeInfo> = meta.list("nodes/").await?;
    let colls: BTreeMap<String, CollectionRecord> = meta.list("collections/").await?;
    let current: BTreeMap<String, Assignment> = meta.list("assign/").await?;
    let data: Vec<&str> = nodes
        .values()
        .filter(|n| n.roles.contains(&Role::Data))
        .map(|n| n.id.as_str())
        .collect();
    let query: Vec<&str> = nodes
        .values()
        .filter(|n| n.roles.contains(&Role::Query))
        .map(|n| n.id.as_str())
        .collect();
    let plan = plan(&data, &query, &colls, &current);
    for (k, a) in &plan {
        if current.get(k) != Some(a) {
            tracing::info!(shard = %k, primary = ?a.primary, replicas = ?a.replicas, "assigning");
            meta.put(&format!("assign/{k}"), a, None).await?;
        }
    }
    for k in current.keys() {
        if !plan.contains_key(k) {
            meta.delete(&format!("assign/{k}"), false).await?;
        }
    }
    Ok(())
}

/// The assignment of every shard, given the live nodes and the current assignment:
/// existing placements on live nodes stay; missing ones go to the least-loaded node; then
/// at most one replica moves from the most to the least loaded query node (so a joining
/// node fills up round by round without every shard moving at once).
pub fn plan(
    data: &[&str],
    query: &[&str],
    colls: &BTreeMap<String, CollectionRecord>,
    current: &BTreeMap<String, Assignment>,
) -> BTreeMap<String, Assignment> {
    let mut out: BTreeMap<String, Assignment> = BTreeMap::new();
    let mut pload: HashMap<&str, usize> = data.iter().map(|d| (*d, 0)).collect();
    let mut qload: HashMap<&str, usize> = query.iter().map(|q| (*q, 0)).collect();
    let mut shards: Vec<(String, u32)> = Vec::new();
    for c in colls.values() {
        for s in 0..c.shards {
            shards.push((format!("{}/{}", c.id, s), c.replicas));
        }
    }
    // Keep what is on live nodes.
    for (k, _) in &shards {
        let mut a = current.get(k).cloned().unwrap_or_default();
        if a.primary.as_deref().is_some_and(|p| !pload.contains_key(p)) {
            a.primary = None;
        }
        a.replicas.retain(|r| qload.contains_key(r.as_str()));
        if let Some(p) = &a.primary {
            *pload.get_mut(p.as_str()).expect("live") += 1;
        }
        for r in &a.replicas {
            *qload.get_mut(r.as_str()).expect("live") += 1;
        }
        out.insert(k.clone(), a);
    }
    // Fill what is missing.
    for (k, want) in &shards {
        let a = out.get_mut(k).expect("planned");
        if a.primary.is_none() {
            if let Some(p) = least(&pload, |_| true) {
                *pload.get_mut(p).expect("live") += 1;
                a.primary = Some(p.to_string());
            }
        }
        let primary = a.primary.clone();
        let eligible = |n: &str| Some(n) != primary.as_deref();
        let want = (*want as usize).min(query.iter().filter(|q| eligible(q)).count());
        a.replicas.truncate(want);
        while a.replicas.len() < want {
            let taken = a.replicas.clone();
            let Some(q) = least(&qload, |n| eligible(n) && !taken.iter().any(|t| t == n)) else {
                break;
            };
            *qload.get_mut(q).expect("live") += 1;
            a.replicas.push(q.to_string());
        }
    }
    // Balance primaries the same way: one shard per round moves to the least loaded data
    // node (the new one opens it once the old one has flushed, checkpointed and released
    // its ownership key).
    if let (Some(max), Some(min)) = (most(&pload), least(&pload, |_| true)) {
        if pload[max] > pload[min] + 1 {
            for a in out.values_mut() {
                if a.primary.as_deref() == Some(max) && !a.replicas.iter().any(|r| r == min) {
                    a.primary = Some(min.to_string());
                    break;
                }
            }
        }
    }
    // Balance: one move per round from the most to the least loaded query node.
    if let (Some(max), Some(min)) = (most(&qload), least(&qload, |_| true)) {
        if qload[max] > qload[min] + 1 {
            for a in out.values_mut() {
                let Some(i) = a.replicas.iter().position(|r| r == max) else {
                    continue;
                };
                if a.replicas.iter().any(|r| r == min) || a.primary.as_deref() == Some(min) {
                    continue;
                }
                a.replicas[i] = min.to_string();
                break;
            }
        }
    }
    out
}

fn least<'a>(load: &HashMap<&'a str, usize>, ok: impl Fn(&str) -> bool) -> Option<&'a str> {
    let mut v: Vec<(&str, usize)> = load
        .iter()
        .filter(|(n, _)| ok(n))
        .map(|(n, l)| (*n, *l))
        .collect();
    v.sort_by(|a, b| a.1.cmp(&b.1).then(a.0.cmp(b.0)));
    v.first().map(|x| x.0)
}

fn most<'a>(load: &HashMap<&'a str, usize>) -> Option<&'a str> {
    let mut v: Vec<(&str, usize)> = load.iter().map(|(n, l)| (*n, *l)).collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    v.first().map(|x| x.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn coll(id: u64, shards: u32, replicas: u32) -> (String, CollectionRecord) {
        (
            format!("c{id}"),
            CollectionRecord {
                id,
                name: format!("c{id}"),
                shards,
                create: serde_json::json!({}),
                ddl: vec![],
                replicas,
            },
        )
    }

    #[test]
    fn every_shard_gets_a_primary_and_its_replicas_on_distinct_nodes() {
        let colls: BTreeMap<_, _> = [coll(1, 3, 2)].into_iter().collect();
        let p = plan(&["d1", "d2"], &["q1", "q2", "q3"], &colls, &BTreeMap::new());
        assert_eq!(p.len(), 3);
        let mut per_q: HashMap<String, usize> = HashMap::new();
        for a in p.values() {
            assert!(a.primary.is_some());
            assert_eq!(a.replicas.len(), 2);
            assert_ne!(a.replicas[0], a.replicas[1]);
            for r in &a.replicas {
                *per_q.entry(r.clone()).or_default() += 1;
            }
        }
        assert_eq!(per_q.values().copied().collect::<Vec<_>>(), vec![2, 2, 2]);
    }

    #[test]
    fn a_dead_node_s_shards_move_and_live_placements_stay() {
        let colls: BTreeMap<_, _> = [coll(1, 3, 1)].into_iter().collect();
        let p1 = plan(&["d1"], &["q1", "q2", "q3"], &colls, &BTreeMap::new());
        let p2 = plan(&["d1"], &["q1", "q3"], &colls, &p1);
        for (k, a) in &p2 {
            assert_eq!(a.replicas.len(), 1);
            assert_ne!(a.replicas[0], "q2");
            if p1[k].replicas[0] != "q2" {
                assert_eq!(
                    a.replicas, p1[k].replicas,
                    "a placement on a live node moved"
                );
            }
        }
    }

    #[test]
    fn a_joining_node_takes_load_round_by_round() {
        let colls: BTreeMap<_, _> = [coll(1, 4, 1)].into_iter().collect();
        let mut p = plan(&["d1"], &["q1", "q2"], &colls, &BTreeMap::new());
        for _ in 0..4 {
            p = plan(&["d1"], &["q1", "q2", "q3"], &colls, &p);
        }
        let mut per_q: HashMap<String, usize> = HashMap::new();
        for a in p.values() {
            *per_q.entry(a.replicas[0].clone()).or_default() += 1;
        }
        assert!(per_q.get("q3").copied().unwrap_or(0) >= 1, "{per_q:?}");
        assert!(per_q.values().all(|&n| n <= 2), "{per_q:?}");
    }

    #[test]
    fn a_joining_data_node_takes_primaries() {
        let colls: BTreeMap<_, _> = [coll(1, 4, 0)].into_iter().collect();
        let mut p = plan(&["d1"], &[], &colls, &BTreeMap::new());
        assert!(p.values().all(|a| a.primary.as_deref() == Some("d1")));
        for _ in 0..4 {
            p = plan(&["d1", "d2"], &[], &colls, &p);
        }
        let on_d2 = p
            .values()
            .filter(|a| a.primary.as_deref() == Some("d2"))
            .count();
        assert_eq!(on_d2, 2, "{p:?}");
    }

    #[test]
    fn no_nodes_no_primary_and_no_panic() {
        let colls: BTreeMap<_, _> = [coll(1, 2, 3)].into_iter().collect();
        let p = plan(&[], &[], &colls, &BTreeMap::new());
        assert!(p
            .values()
            .all(|a| a.primary.is_none() && a.replicas.is_empty()));
    }
}
