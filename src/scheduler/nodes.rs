//! The scheduler's nodes: greeting and filtering them, losing them (re-queue, abandon,
//! charge attempts), and saying what was found when nothing is usable.

use super::*;

impl Scheduler {
    pub(super) fn unusable(&mut self, peer: PeerId, why: String) {
        if let Some(node) = self.nodes.get_mut(&peer) {
            warn!(node = %node.name, %peer, reason = %why, "node not used");
            node.phase = Phase::Unusable(why.clone());
            let node = node_ref(&node.name, &peer, node.ip);
            self.cluster_event(ClusterEvent::NodeUnusable { node, reason: why });
        }
        self.requeue_from(peer);
    }

    pub(super) fn cluster_event(&self, ev: ClusterEvent) {
        if let Some(cb) = &self.s.on_cluster {
            cb(&ev);
        }
    }

    pub(super) fn node_ref(&self, peer: &PeerId) -> Option<NodeRef> {
        self.nodes.get(peer).map(|n| node_ref(&n.name, peer, n.ip))
    }

    pub(super) fn node_infos(&self) -> Vec<NodeInfo> {
        self.order
            .iter()
            .filter_map(|p| self.nodes.get(p).map(|n| (p, n)))
            .map(|(p, n)| NodeInfo {
                node: node_ref(&n.name, p, n.ip),
                platform: n.platform.clone(),
                cpus: n.cpus,
                status: match &n.phase {
                    Phase::Greeting | Phase::Reserving | Phase::Staging => "starting".to_string(),
                    Phase::Ready => "ready".to_string(),
                    Phase::Unusable(why) => format!("unusable: {why}"),
                    Phase::Lost => "lost".to_string(),
                },
                jobs_done: n.jobs_done,
            })
            .collect()
    }

    pub(super) fn on_hello(&mut self, peer: PeerId, h: Hello) {
        if h.role != Role::Node {
            self.clients_seen.insert(peer);
            self.nodes.remove(&peer);
            self.order.retain(|p| *p != peer);
            return;
        }
        let Some(node) = self.nodes.get_mut(&peer) else { return };
        node.name = h.name.clone();
        node.platform = format!("{}/{}", h.os, h.arch);
        let found = node_ref(&node.name, &peer, node.ip);
        self.cluster_event(ClusterEvent::NodeFound(found));
        let Some(node) = self.nodes.get_mut(&peer) else { return };
        if h.wire_version != WIRE_VERSION {
            let why = format!(
                "speaks dispy protocol version {} (dispy-peer {}), this client speaks version {WIRE_VERSION} (dispy-peer {})",
                h.wire_version,
                h.software,
                env!("CARGO_PKG_VERSION")
            );
            return self.unusable(peer, why);
        }
        let ip = node.ip.map(|i| i.to_string());
        if !self.s.patterns.is_empty()
            && !self.s.patterns.iter().any(|p| p.matches(ip.as_deref(), &peer.to_string(), &h.name))
        {
            return self.unusable(peer, "not selected by --nodes".into());
        }
        if h.cpus == 0 {
            return self.unusable(peer, "serves no CPUs".into());
        }
        if let Some(filter) = &self.s.node_filter {
            let facts = NodeFacts {
                name: h.name.clone(),
                peer_id: peer.to_string(),
                ip: node.ip.map(|i| i.to_string()),
                os: h.os.clone(),
                arch: h.arch.clone(),
                cpus: h.cpus,
                memory_bytes: h.memory_bytes,
            };
            if !filter(&facts) {
                return self.unusable(peer, "rejected by the cluster's node filter".into());
            }
        }
        let here = format!("{}/{}", std::env::consts::OS, std::env::consts::ARCH);
        if self.s.function.is_some() && node.platform != here {
            // A function travels as this program's compiled code: it runs only where this
            // binary does.
            let why = format!("runs {}, but this program's functions are built for {here}", node.platform);
            return self.unusable(peer, why);
        }
        node.phase = Phase::Reserving;
        let reserve = Request::Reserve(Reserve {
            cluster: self.s.cluster,
            cpus: self.s.cpus_per_node,
            program: self.s.program.clone(),
            function: self.s.function.clone(),
            files: self.s.files.iter().map(|f| f.entry.clone()).collect(),
        });
        self.spawn_request(peer, reserve, Internal::Reserved);
    }

    /// Puts a node's unfinished jobs back in the queue (front, in order).
    pub(super) fn requeue_from(&mut self, peer: PeerId) {
        let Some(node) = self.nodes.get_mut(&peer) else { return };
        let mut ids: Vec<JobId> = node.in_flight.drain().collect();
        ids.sort();
        for id in ids.into_iter().rev() {
            if let Some(job) = self.jobs.get_mut(&id)
                && matches!(job.state, JobState::OnNode(p) if p == peer)
            {
                job.state = JobState::Queued;
                self.queue.push_front(id);
            }
        }
        self.dispatch();
    }

    pub(super) fn lose(&mut self, peer: PeerId, why: &str) {
        let Some(node) = self.nodes.get_mut(&peer) else { return };
        if matches!(node.phase, Phase::Unusable(_) | Phase::Lost) {
            node.phase = Phase::Lost;
            return;
        }
        node.phase = Phase::Lost;
        let name = node.name.clone();
        let ip = node.ip;
        self.cluster_event(ClusterEvent::NodeLost { node: node_ref(&name, &peer, ip), reason: why.to_string() });
        let Some(node) = self.nodes.get_mut(&peer) else { return };
        if node.in_flight.is_empty() {
            info!(node = %name, %peer, reason = why, "node lost");
            return;
        }
        warn!(node = %name, %peer, reason = why, jobs = node.in_flight.len(), reentrant = self.s.reentrant, "node lost with jobs on it");
        if self.s.reentrant {
            // Jobs that were running count an attempt; one that has now been running on
            // max_retries nodes that all died is suspected of killing them and fails, so a
            // poison job cannot take the whole cluster down.
            // Running: those the node reported started, and — as it may have died before
            // saying so — the first `cpus` it received (it runs them in that order).
            let mut in_flight: Vec<(u64, JobId)> =
                node.in_flight.iter().filter_map(|id| self.jobs.get(id).map(|j| (j.dispatched, *id))).collect();
            in_flight.sort();
            let cpus = node.cpus.max(1) as usize;
            let mut poison = Vec::new();
            for (i, (_, id)) in in_flight.into_iter().enumerate() {
                let Some(job) = self.jobs.get_mut(&id) else { continue };
                if job.started || i < cpus {
                    job.attempts += 1;
                    job.suspect = true;
                    if job.attempts >= self.s.max_retries {
                        poison.push((id, job.attempts, job.args.clone()));
                    }
                }
                job.started = false;
            }
            for (id, attempts, args) in poison {
                if let Some(node) = self.nodes.get_mut(&peer) {
                    node.in_flight.remove(&id);
                }
                let outcome = JobOutcome::Crashed(format!(
                    "it was running on {attempts} nodes that all died (the last: {name}); giving up after max_retries {}",
                    self.s.max_retries
                ));
                warn!(job = %id, attempts, "giving up on a job whose nodes keep dying");
                self.finish(JobReport::unrun(id, args, Some(node_ref(&name, &peer, ip)), outcome));
            }
            self.requeue_from(peer);
            return;
        }
        let mut ids: Vec<JobId> = node.in_flight.drain().collect();
        ids.sort();
        for id in ids {
            let Some(job) = self.jobs.get(&id) else { continue };
            let outcome = JobOutcome::Abandoned(format!("node {name} was lost: {why}"));
            let report = JobReport::unrun(id, job.args.clone(), Some(node_ref(&name, &peer, ip)), outcome);
            self.finish(report);
        }
    }

    /// Whether some node is usable or on its way to it.
    pub(super) fn has_node(&self) -> bool {
        self.nodes
            .values()
            .any(|n| matches!(n.phase, Phase::Greeting | Phase::Reserving | Phase::Staging | Phase::Ready))
    }

    pub(super) fn no_node_message(&self) -> String {
        let mut msg = format!(
            "no usable dispy node found within {:.1} s (--discover-timeout).\n  searched: {}",
            self.s.discover_timeout.as_secs_f64(),
            self.s.searched
        );
        let mut found = Vec::new();
        for (addr, why) in &self.dial_failures {
            found.push(format!("{addr}: {why}"));
        }
        for peer in &self.order {
            let Some(n) = self.nodes.get(peer) else { continue };
            let ip = n.ip.map(|i| format!(" at {i}")).unwrap_or_default();
            let state = match &n.phase {
                Phase::Unusable(why) => why.clone(),
                Phase::Lost => "lost".to_string(),
                _ => "usable".to_string(),
            };
            found.push(format!("node {}{ip}: {state}", n.name));
        }
        if !self.clients_seen.is_empty() {
            found.push(format!("{} other client(s), which run no jobs", self.clients_seen.len()));
        }
        if found.is_empty() {
            msg.push_str(
                "\n  found: nothing. Is `dispy-peer serve` running, with the same secret, reachable from here?",
            );
        } else {
            msg.push_str("\n  found:");
            for f in found {
                msg.push_str("\n    - ");
                msg.push_str(&f);
            }
        }
        msg
    }
}
