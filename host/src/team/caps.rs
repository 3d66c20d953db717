//! The caps that keep plugins from making the host do unbounded work: how
//! big and deep a plan may be ([`PlanLimits`]), what the bus carries
//! ([`BusLimits`]) and how many and how large model calls a plugin may make
//! ([`ModelLimits`]). A plugin is untrusted: whatever it asks for, one call
//! or one task ends with a typed refusal, and the host's memory and CPU stay
//! bounded. One home for these numbers: the defaults here, each overridable
//! in the team spec's `[team]` section (and a task's model calls in its
//! `[[task]]`).
//!
//! What lives elsewhere: the sandbox's own limits per plugin call (compute
//! time, memory, bytes through an import: `plugin::SandboxLimits`), and the
//! budgets of tokens, cost and time (`budget`).

use serde::{Deserialize, Serialize};

pub use super::bus::BusLimits;
pub use super::plan::PlanLimits;
use crate::spec::team::TeamSection;

/// Limits on model calls; one home for these numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelLimits {
    /// Model calls one plugin call (a replica's role call, a verifier's
    /// judgement) may make, refused or not; the next one gets
    /// `llm-error::budget-exhausted`. Waiting on a model does not count
    /// against a plugin's compute deadline, so without this a loop on
    /// `llm.chat` would run until the task's budgets stop it. Default 16
    /// (`max_calls_per_plugin_call`).
    pub calls_per_plugin_call: u32,
    /// Model calls one task may make over all its replicas, rounds and
    /// verifiers, unless its `[[task]] max_calls` says otherwise. Default
    /// 256 (`max_task_calls`).
    pub calls_per_task: u64,
    /// Bytes of one request's messages (roles and contents) and stop
    /// sequences. Default 1 MiB (`max_request_bytes`).
    pub request_bytes: usize,
    /// Messages in one request. Default 256 (`max_request_messages`).
    pub request_messages: usize,
    /// Stop sequences in one request. Default 16 (`max_request_stops`).
    pub request_stops: usize,
}

impl Default for ModelLimits {
    fn default() -> Self {
        ModelLimits {
            calls_per_plugin_call: 16,
            calls_per_task: 256,
            request_bytes: 1 << 20,
            request_messages: 256,
            request_stops: 16,
        }
    }
}

/// Every cap of a job.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Caps {
    pub plan: PlanLimits,
    pub bus: BusLimits,
    pub model: ModelLimits,
    /// When a task's voter is asked and how late replicas are hedged
    /// (`[team] consensus`); not a cap, but set for the job in the same
    /// place and carried to each task with them.
    #[serde(default)]
    pub consensus: super::consensus::ConsensusConfig,
    /// What the job's client asked of every model call (a served request's
    /// `max_tokens`, `temperature`, `seed`, `stop`); not a cap either.
    #[serde(default, skip_serializing_if = "crate::model::Sampling::is_default")]
    pub sampling: crate::model::Sampling,
}

impl Caps {
    /// The defaults, with what `[team]` overrides (the spec checked the
    /// values at load: none is zero, `max_plan_subtasks` is within its
    /// ceiling).
    pub fn of(team: &TeamSection) -> Caps {
        let d = Caps::default();
        Caps {
            plan: PlanLimits {
                max_subtasks: team.max_plan_subtasks.unwrap_or(d.plan.max_subtasks),
                max_depth: team.max_plan_depth.unwrap_or(d.plan.max_depth),
                max_job_tasks: team.max_job_tasks.unwrap_or(d.plan.max_job_tasks),
                max_prompt_bytes: team
                    .max_plan_prompt_bytes
                    .unwrap_or(d.plan.max_prompt_bytes),
            },
            bus: BusLimits {
                capacity: team.bus_capacity.unwrap_or(d.bus.capacity),
                message_bytes: team.max_message_bytes.unwrap_or(d.bus.message_bytes),
                mailbox_bytes: team.max_mailbox_bytes.unwrap_or(d.bus.mailbox_bytes),
                run_bytes: team.max_bus_bytes.unwrap_or(d.bus.run_bytes),
                run_messages: team.max_bus_messages.unwrap_or(d.bus.run_messages),
                messages_per_call: team
                    .max_messages_per_call
                    .unwrap_or(d.bus.messages_per_call),
                journaled_messages: team
                    .max_journaled_messages
                    .unwrap_or(d.bus.journaled_messages),
            },
            model: ModelLimits {
                calls_per_plugin_call: team
                    .max_calls_per_plugin_call
                    .unwrap_or(d.model.calls_per_plugin_call),
                calls_per_task: team.max_task_calls.unwrap_or(d.model.calls_per_task),
                request_bytes: team.max_request_bytes.unwrap_or(d.model.request_bytes),
                request_messages: team
                    .max_request_messages
                    .unwrap_or(d.model.request_messages),
                request_stops: team.max_request_stops.unwrap_or(d.model.request_stops),
            },
            consensus: team.consensus,
            sampling: Default::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    //! Caps as a team spec sets them, and their defaults.
    use super::*;
    use crate::spec::team::TeamSpec;

    const OK: &str = "[team]\nname = \"t\"\n\n[[node]]\nname = \"s\"\nbackend = \"sim\"\n\n[[plugin]]\nname = \"solver\"\ngrants = [\"llm\"]\n\n[[task]]\nid = \"a\"\nrole = \"solver\"\nvoter = \"majority\"\nreplicas = 3\n";

    #[test]
    fn caps_are_read_from_team_and_task() {
        let text = OK.replace(
            "name = \"t\"\n",
            "name = \"t\"\nmax_plan_subtasks = 8\nmax_plan_depth = 0\nmax_job_tasks = 50\nmax_message_bytes = 1024\nmax_calls_per_plugin_call = 4\nmax_task_calls = 32\nmax_request_stops = 0\n",
        ) + "max_calls = 7\n";
        let s = TeamSpec::parse(&text, std::path::Path::new("t.toml")).unwrap();
        let caps = Caps::of(&s.team);
        assert_eq!(
            (
                caps.plan.max_subtasks,
                caps.plan.max_depth,
                caps.plan.max_job_tasks,
                caps.bus.message_bytes,
                caps.bus.capacity,
                caps.model.calls_per_plugin_call,
                caps.model.calls_per_task,
                caps.model.request_stops,
                s.tasks[0].max_calls,
            ),
            (8, 0, 50, 1024, 64, 4, 32, 0, Some(7))
        );
        let d = Caps::of(&TeamSection::default());
        assert_eq!(d, Caps::default());
        assert_eq!(
            (d.plan.max_subtasks, d.plan.max_depth, d.plan.max_job_tasks),
            (64, 3, 1000)
        );
    }
}
