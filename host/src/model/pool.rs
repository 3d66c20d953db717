//! Nodes shared between teams: the teams one server serves route to one
//! set of nodes. A node defined the same way in two team specs (same name,
//! same settings, relative paths resolved against the same folder, same
//! breaker settings) is built once — an embedded model is loaded once —
//! and both teams' routers see one load count, one health record and one
//! token rate for it. Nodes that differ in anything are distinct, even
//! under one name. A node lives while a router holds it: reloading a team
//! whose node changed builds the new one, and the old goes when the last
//! run using it ends.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

use super::node::NodeSpec;
use super::route::NodeHandle;
use super::router::{Router, RouterConfig, Slot};

/// Nodes by definition, held weakly: the routers own them.
#[derive(Default)]
pub struct NodePool {
    shared: Mutex<HashMap<String, Weak<Slot>>>,
}

impl NodePool {
    pub fn new() -> Self {
        Self::default()
    }

    /// A router over `nodes` (each with the folder its relative paths are
    /// resolved against), reusing the nodes already built with the same
    /// definition; `build(i, spec, folder)` builds the others.
    pub fn router<E>(
        &self,
        nodes: Vec<(NodeSpec, PathBuf)>,
        config: RouterConfig,
        mut build: impl FnMut(usize, &NodeSpec, &Path) -> Result<NodeHandle, E>,
    ) -> Result<Router, E> {
        let mut slots = Vec::with_capacity(nodes.len());
        for (i, (spec, base)) in nodes.iter().enumerate() {
            let key = format!("{:?}\u{0}{}\u{0}{:?}", spec, base.display(), config.breaker);
            let found = self.lock().get(&key).and_then(Weak::upgrade);
            let slot = match found {
                Some(slot) => slot,
                None => {
                    // Built outside the lock: an embedded model takes a while.
                    let slot = Arc::new(Slot::new(build(i, spec, base)?, &config.breaker));
                    let mut shared = self.lock();
                    shared.retain(|_, w| w.strong_count() > 0);
                    match shared.get(&key).and_then(Weak::upgrade) {
                        // Another team built it meanwhile: use that one.
                        Some(other) => other,
                        None => {
                            shared.insert(key, Arc::downgrade(&slot));
                            slot
                        }
                    }
                }
            };
            slots.push(slot);
        }
        Ok(Router::with_slots(slots, config))
    }

    /// Distinct nodes alive (held by a router).
    pub fn len(&self) -> usize {
        self.lock()
            .values()
            .filter(|w| w.strong_count() > 0)
            .count()
    }

    /// Whether no node is alive.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Weak<Slot>>> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }
}
