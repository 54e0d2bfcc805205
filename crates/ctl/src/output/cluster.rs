//! `cluster status` as text: the answering replica's view of the raft
//! group, then each member's progress as the leader sees it.

use tandem_proto::v1;

use super::names::replica_name;
use super::status::ago;
use super::table::{Table, fields};

/// `0.1s ago` below ten seconds (heartbeats come every 100 ms), then as
/// [`ago`].
fn heard_ago(ms: u64) -> String {
    if ms < 10_000 {
        format!("{:.1}s ago", ms as f64 / 1_000.0)
    } else {
        // `ago` takes two instants; 1 ms stands for "then".
        ago(ms as i64 + 1, 1)
    }
}

/// `cluster status`: the answering replica's view, then the members.
pub fn cluster_status(c: &v1::ClusterStatus) -> String {
    let leader_known = c.leader_id != 0;
    let is_leader = c.role == "leader";
    let mut out = fields(&[
        ("replica", replica_name(c.replica_id)),
        (
            "role",
            if c.role.is_empty() {
                "unknown".into()
            } else {
                c.role.clone()
            },
        ),
        (
            "leader",
            if leader_known {
                replica_name(c.leader_id)
            } else {
                "none known (an election may be under way)".into()
            },
        ),
        ("term", c.term.to_string()),
        ("commit index", c.commit_index.to_string()),
        ("applied index", c.applied_index.to_string()),
    ]);
    if !c.apply_error.is_empty() {
        out.push_str(&format!("APPLY STOPPED:  {}\n", c.apply_error));
    }
    out.push('\n');
    if !c.members.is_empty() {
        let mut t = Table::new(&[
            "id",
            "address",
            "role",
            "reachable",
            "last heard",
            "matched",
            "lag",
            "progress",
        ]);
        for m in &c.members {
            // Only the leader tracks progress: zeros from anyone else mean
            // "not known", not "nothing matched".
            let known = m.role != "unknown" && !m.role.is_empty();
            let progress = |v: u64| if known { v.to_string() } else { String::new() };
            let answering = m.id == c.replica_id;
            t.row(vec![
                m.id.to_string(),
                m.address.clone(),
                if m.role.is_empty() {
                    "unknown".into()
                } else if m.suffrage == "learner" {
                    format!("{} (learner)", m.role)
                } else {
                    m.role.clone()
                },
                match m.reachable {
                    Some(true) => "yes".into(),
                    Some(false) => "NO".into(),
                    None => String::new(),
                },
                match (answering, m.last_heard_ms) {
                    (true, _) => "(answering)".into(),
                    (false, Some(ms)) => heard_ago(ms),
                    (false, None) if m.reachable.is_some() => "never".into(),
                    (false, None) => String::new(),
                },
                progress(m.matched_index),
                progress(m.lag),
                if known {
                    m.progress.clone()
                } else {
                    String::new()
                },
            ]);
        }
        out.push_str(&t.render());
        let unreachable: Vec<String> = c
            .members
            .iter()
            .filter(|m| m.reachable == Some(false))
            .map(|m| replica_name(m.id))
            .collect();
        // Learners do not vote: the majority is of voters.
        let voters = c.members.iter().filter(|m| m.suffrage != "learner").count();
        if !unreachable.is_empty() {
            let whose = if is_leader {
                "the leader has"
            } else {
                "this replica has"
            };
            out.push_str(&format!(
                "unreachable: {} ({whose} not heard from {} within an election timeout); the group decides while a majority ({} of {}) is reachable\n",
                unreachable.join(", "),
                if unreachable.len() == 1 { "it" } else { "them" },
                voters / 2 + 1,
                voters,
            ));
        }
    }
    let progress_unknown = c.members.is_empty()
        || c.members
            .iter()
            .any(|m| m.role == "unknown" || m.role.is_empty());
    if !is_leader && progress_unknown {
        if leader_known {
            let leader = replica_name(c.leader_id);
            let address = c
                .members
                .iter()
                .find(|m| m.id == c.leader_id && !m.address.is_empty())
                .map(|m| &m.address);
            match address {
                Some(address) => out.push_str(&format!(
                    "member progress is known by the leader ({leader}); ask it with --endpoint {address}\n"
                )),
                None => out.push_str(&format!(
                    "member progress is known by the leader ({leader}); ask it with --endpoint\n"
                )),
            }
        } else {
            out.push_str(
                "member progress is known by the leader, and none is known right now; try again shortly\n",
            );
        }
    } else if c.members.is_empty() {
        out.push_str("no members reported\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::output::json::{ClusterStatusJson, to_json};
    use crate::output::testdata::*;

    fn member(id: u64, role: &str, matched: u64, lag: u64) -> v1::ClusterMember {
        v1::ClusterMember {
            id,
            address: format!("10.0.1.{id}:7400"),
            role: role.into(),
            matched_index: matched,
            lag,
            reachable: Some(true),
            last_heard_ms: Some(if id == 1 { 0 } else { 40 + id }),
            progress: if role == "unknown" {
                String::new()
            } else {
                "replicate".into()
            },
            ..Default::default()
        }
    }

    fn cluster(
        replica: u64,
        role: &str,
        leader: u64,
        members: Vec<v1::ClusterMember>,
    ) -> v1::ClusterStatus {
        v1::ClusterStatus {
            replica_id: replica,
            role: role.into(),
            leader_id: leader,
            term: 4,
            commit_index: 120,
            applied_index: 119,
            members,
            ..Default::default()
        }
    }

    #[test]
    fn a_learner_is_marked_and_does_not_count_toward_the_majority() {
        let mut learner = member(4, "follower", 100, 20);
        learner.suffrage = "learner".into();
        learner.reachable = Some(false);
        let mut c = cluster(
            1,
            "leader",
            1,
            vec![
                member(1, "leader", 120, 0),
                member(2, "follower", 120, 0),
                member(3, "follower", 120, 0),
                learner,
            ],
        );
        c.apply_error = "cannot decode raft entry 121".into();
        let out = cluster_status(&c);
        assert!(out.contains("follower (learner)"), "{out}");
        assert!(out.contains("a majority (2 of 3) is reachable"), "{out}");
        assert!(
            out.contains("APPLY STOPPED:  cannot decode raft entry 121"),
            "{out}"
        );
        let json = parse(&to_json(&ClusterStatusJson::from(&c)));
        assert_eq!(json["members"][3]["suffrage"], "learner");
        assert_eq!(json["apply_error"], "cannot decode raft entry 121");
    }

    #[test]
    fn the_leader_shows_every_members_progress() {
        let c = cluster(
            1,
            "leader",
            1,
            vec![
                member(1, "leader", 120, 0),
                member(2, "follower", 118, 2),
                member(3, "follower", 120, 0),
            ],
        );
        assert_eq!(
            cluster_status(&c),
            "\
replica:        control-1
role:           leader
leader:         control-1
term:           4
commit index:   120
applied index:  119

ID   ADDRESS         ROLE       REACHABLE   LAST HEARD    MATCHED   LAG   PROGRESS
1    10.0.1.1:7400   leader     yes         (answering)   120       0     replicate
2    10.0.1.2:7400   follower   yes         0.0s ago      118       2     replicate
3    10.0.1.3:7400   follower   yes         0.0s ago      120       0     replicate
"
        );
        assert_eq!(
            parse(&to_json(&ClusterStatusJson::from(&c))),
            json!({
                "replica_id": 1, "role": "leader", "leader_id": 1, "term": 4,
                "commit_index": 120, "applied_index": 119,
                "members": [
                    {"id": 1, "address": "10.0.1.1:7400", "role": "leader", "matched_index": 120, "lag": 0,
                     "reachable": true, "last_heard_ms": 0, "progress": "replicate"},
                    {"id": 2, "address": "10.0.1.2:7400", "role": "follower", "matched_index": 118, "lag": 2,
                     "reachable": true, "last_heard_ms": 42, "progress": "replicate"},
                    {"id": 3, "address": "10.0.1.3:7400", "role": "follower", "matched_index": 120, "lag": 0,
                     "reachable": true, "last_heard_ms": 43, "progress": "replicate"}
                ]
            })
        );
    }

    #[test]
    fn a_member_the_leader_has_not_heard_from_is_marked_unreachable() {
        let mut dead = member(2, "follower", 118, 2);
        dead.reachable = Some(false);
        dead.last_heard_ms = Some(14_200);
        dead.progress = "probe".into();
        let mut never = member(3, "follower", 0, 120);
        never.reachable = Some(false);
        never.last_heard_ms = None;
        never.progress = "probe".into();
        let c = cluster(
            1,
            "leader",
            1,
            vec![member(1, "leader", 120, 0), dead, never],
        );
        let out = cluster_status(&c);
        assert!(
            out.ends_with(
                "\
ID   ADDRESS         ROLE       REACHABLE   LAST HEARD    MATCHED   LAG   PROGRESS
1    10.0.1.1:7400   leader     yes         (answering)   120       0     replicate
2    10.0.1.2:7400   follower   NO          14s ago       118       2     probe
3    10.0.1.3:7400   follower   NO          never         0         120   probe
unreachable: control-2, control-3 (the leader has not heard from them within an election timeout); the group decides while a majority (2 of 3) is reachable
"
            ),
            "{out}"
        );
        let v = parse(&to_json(&ClusterStatusJson::from(&c)));
        assert_eq!(v["members"][1]["reachable"], false);
        assert_eq!(v["members"][1]["last_heard_ms"], 14_200);
        assert_eq!(v["members"][2]["last_heard_ms"], serde_json::Value::Null);
        assert_eq!(heard_ago(3_450), "3.5s ago");
        assert_eq!(heard_ago(125_000), "2m ago");
    }

    #[test]
    fn a_follower_points_at_the_leader_for_member_progress() {
        let c = cluster(
            2,
            "follower",
            1,
            vec![member(1, "unknown", 0, 0), member(2, "unknown", 0, 0)],
        );
        let out = cluster_status(&c);
        assert!(
            out.contains(
                "\
ID   ADDRESS         ROLE      REACHABLE   LAST HEARD    MATCHED   LAG   PROGRESS
1    10.0.1.1:7400   unknown   yes         0.0s ago      -         -     -
2    10.0.1.2:7400   unknown   yes         (answering)   -         -     -
member progress is known by the leader (control-1); ask it with --endpoint 10.0.1.1:7400
"
            ),
            "{out}"
        );
        assert!(
            out.starts_with(
                "replica:        control-2\nrole:           follower\nleader:         control-1\n"
            ),
            "{out}"
        );

        let out = cluster_status(&cluster(2, "follower", 1, vec![]));
        assert!(
            out.ends_with(
                "\n\nmember progress is known by the leader (control-1); ask it with --endpoint\n"
            ),
            "{out}"
        );
        let out = cluster_status(&cluster(2, "candidate", 0, vec![]));
        assert!(
            out.contains("leader:         none known (an election may be under way)\n"),
            "{out}"
        );
        assert!(
            out.ends_with("member progress is known by the leader, and none is known right now; try again shortly\n"),
            "{out}"
        );
        // A group of one whose leader lists no members.
        let out = cluster_status(&cluster(1, "leader", 1, vec![]));
        assert!(
            out.ends_with("applied index:  119\n\nno members reported\n"),
            "{out}"
        );
        assert_eq!(
            parse(&to_json(&ClusterStatusJson::from(&cluster(
                1,
                "leader",
                1,
                vec![]
            ))))["members"],
            json!([])
        );
    }
}
