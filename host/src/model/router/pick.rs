//! How the router picks a node for a call: among the healthy nodes that
//! match the call's route, not yet tried, preferring nodes not serving the
//! task's other replicas, by power of two choices on outstanding requests
//! with an EWMA-latency tie-break, within each node's concurrency and token
//! rate.

use super::*;

pub(super) enum Pick {
    Node(usize),
    /// Matching nodes exist but are all busy or rate limited.
    Wait,
    /// No node can serve; why, node by node.
    None(String),
    /// Every matching node's token-rate window is smaller than the call:
    /// none will ever take it.
    TooLarge(String),
}

impl Router {
    pub(super) fn matches(&self, i: usize, route: &Route) -> bool {
        let n = &self.slots[i].node;
        route
            .node
            .as_deref()
            .is_none_or(|want| n.backend.name() == want)
            && route.tags.iter().all(|t| n.tags.contains(t))
    }

    pub(super) fn pick(&self, route: &Route, tried: &[usize], tokens: u32) -> Pick {
        let now = Instant::now();
        let matching: Vec<usize> = (0..self.slots.len())
            .filter(|i| self.matches(*i, route))
            .collect();
        if matching.is_empty() {
            return Pick::None(format!(
                "no node matches {}",
                match &route.node {
                    Some(n) => format!("node {n:?}"),
                    None => format!("tags {:?}", route.tags),
                }
            ));
        }
        // A call larger than a node's tokens per minute never fits its
        // bucket: that node is out, and if every node is, so is the call.
        let window = |i: usize| self.slots[i].node.tokens_per_minute;
        let (matching, small): (Vec<usize>, Vec<usize>) = matching
            .into_iter()
            .partition(|&i| window(i).is_none_or(|w| tokens <= w));
        if matching.is_empty() {
            let nodes: Vec<String> = small
                .iter()
                .map(|&i| {
                    format!(
                        "{} takes {} tokens per minute",
                        self.slots[i].node.backend.name(),
                        window(i).unwrap_or(0)
                    )
                })
                .collect();
            return Pick::TooLarge(format!(
                "the call needs about {tokens} tokens (its prompt plus max_tokens), more than any \
                 node that could serve it ever admits ({}); lower max_tokens or raise the node's \
                 tokens_per_minute",
                nodes.join(", ")
            ));
        }
        let mut why = Vec::new();
        let mut busy = false;
        let mut ready: Vec<usize> = Vec::with_capacity(matching.len());
        for &i in &matching {
            let s = &self.slots[i];
            let health = s.health.lock().unwrap_or_else(|p| p.into_inner());
            if health.cooling_down(now) {
                busy = true;
                continue;
            }
            if !health.looks_available(now) {
                let mut h = health;
                if let Admission::No(r) = h.admit(now) {
                    why.push(format!("{}: {r}", s.node.backend.name()));
                }
                continue;
            }
            drop(health);
            if s.node
                .max_concurrency
                .is_some_and(|m| s.outstanding.load(Ordering::Acquire) >= m)
            {
                busy = true;
                continue;
            }
            ready.push(i);
        }
        // Prefer nodes not tried in this call, then nodes not serving siblings.
        let fresh: Vec<usize> = ready
            .iter()
            .copied()
            .filter(|i| !tried.contains(i))
            .collect();
        let pool = if fresh.is_empty() { ready } else { fresh };
        let spread: Vec<usize> = pool
            .iter()
            .copied()
            .filter(|i| {
                !route
                    .avoid
                    .iter()
                    .any(|a| a == self.slots[*i].node.backend.name())
            })
            .collect();
        let mut pool = if spread.is_empty() { pool } else { spread };
        // Choose by power of two choices; a node whose token bucket cannot
        // take this call now leaves the pool and the choice is made again
        // (only the chosen node's bucket is charged).
        let choice = loop {
            let candidate = match pool.len() {
                0 if busy => return Pick::Wait,
                0 => return Pick::None(format!("no healthy node: {}", why.join("; "))),
                1 => pool[0],
                n => {
                    let (x, y) = match &self.picks {
                        Some(r) => {
                            let mut r = r.lock().unwrap_or_else(|p| p.into_inner());
                            (r.random_range(0..n), r.random_range(0..n - 1))
                        }
                        None => {
                            let mut r = rand::rng();
                            (r.random_range(0..n), r.random_range(0..n - 1))
                        }
                    };
                    let a = pool[x];
                    let mut b = pool[y];
                    if b == a {
                        b = pool[n - 1];
                    }
                    let load = |i: usize| self.slots[i].outstanding.load(Ordering::Acquire);
                    let ewma = |i: usize| {
                        self.slots[i]
                            .health
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .ewma
                            .unwrap_or(0.0)
                    };
                    match load(a).cmp(&load(b)) {
                        std::cmp::Ordering::Less => a,
                        std::cmp::Ordering::Greater => b,
                        std::cmp::Ordering::Equal if ewma(b) < ewma(a) => b,
                        std::cmp::Ordering::Equal => a,
                    }
                }
            };
            let fits = match (
                &self.slots[candidate].limiter,
                NonZeroU32::new(tokens.max(1)),
            ) {
                (Some(l), Some(n)) => match l.check_n(n) {
                    Ok(Ok(())) => true,
                    Ok(Err(_)) => false,
                    // Larger than the bucket: cannot happen, such nodes
                    // left the pool above.
                    Err(_) => true,
                },
                _ => true,
            };
            if fits {
                break candidate;
            }
            busy = true;
            pool.retain(|i| *i != candidate);
        };
        // Take the admission (a probe if half-open).
        let mut h = self.slots[choice]
            .health
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match h.admit(now) {
            Admission::Yes | Admission::Probe => Pick::Node(choice),
            Admission::No(r) => {
                Pick::None(format!("{}: {r}", self.slots[choice].node.backend.name()))
            }
        }
    }
}
