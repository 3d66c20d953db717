//! What a team takes from a role that answers with a plan: at most so many
//! subtasks, nested at most so deep, within a job of at most so many tasks,
//! with ids that are safe to build task ids and bus addresses from, prompts
//! of bounded size and roles the team has. A plan is untrusted output: a
//! role (or a model it asked) can return a 100,000-subtask chain or plan
//! forever, and the host must refuse that plan, fail that task with a
//! reason that names the limit, and go on.
//!
//! Every check here is linear in the plan (the size is checked first, in
//! constant time, so a huge plan costs nothing to refuse) and bounded by
//! [`PlanLimits::max_subtasks`], so it runs inline on the async threads: at
//! the default 64 subtasks, and even at the ceiling of 10,000, it takes far
//! less than a millisecond, less than handing it to a blocking thread.
//!
//! What lives elsewhere: the structural check every plan gets as it leaves
//! the sandbox (`plugin::checks`), and adding the subtasks to the job's
//! graph (`scheduler`), which applies the depth and job-size limits.

use serde::{Deserialize, Serialize};

use super::consensus::PlannedSubtask;
use crate::plugin::checks::{plan_order, PLAN_SUBTASKS_CEILING};
use crate::plugin::Plan;

/// The longest subtask id, in bytes. Ids become part of task ids
/// (`parent.id`) and bus addresses (`task/replica`), so they are short and
/// plain: `A-Z`, `a-z`, `0-9`, `_` and `-`, no `.` (it joins a subtask to
/// its parent) and no `/` (it separates a replica).
pub const SUBTASK_ID_MAX_BYTES: usize = 64;

/// Limits on plans; one home for these numbers, each overridable in the
/// team spec's `[team]` section.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanLimits {
    /// Subtasks in one plan. Default 64 (`max_plan_subtasks`), at most
    /// [`PLAN_SUBTASKS_CEILING`].
    pub max_subtasks: usize,
    /// How deep plans nest: a spec task's plan is depth 1, a plan made by
    /// one of its subtasks depth 2, and so on. Default 3
    /// (`max_plan_depth`).
    pub max_depth: u32,
    /// Tasks in one job, the spec's own and every plan's subtasks. Default
    /// 1,000 (`max_job_tasks`).
    pub max_job_tasks: usize,
    /// Bytes of one subtask's prompt. Default 16 KiB
    /// (`max_plan_prompt_bytes`).
    pub max_prompt_bytes: usize,
}

impl Default for PlanLimits {
    fn default() -> Self {
        PlanLimits {
            max_subtasks: 64,
            max_depth: 3,
            max_job_tasks: 1_000,
            max_prompt_bytes: 16 << 10,
        }
    }
}

/// Why a plan was refused. Each names the limit and how to raise it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error(
        "the plan has {got} subtasks, more than the {max} a plan may have; raise \
         `max_plan_subtasks` in the team spec's [team] section to allow larger plans"
    )]
    TooManySubtasks { got: usize, max: usize },
    #[error(
        "the plan would nest {depth} deep, past the {max} plans may nest (a subtask that plans \
         again nests one deeper); raise `max_plan_depth` in [team], or give the planning task a \
         `subtasks` section whose role answers instead of planning"
    )]
    TooDeep { depth: u32, max: u32 },
    #[error(
        "the plan's {adding} subtasks would take the job to {total} tasks, past the {max} a job \
         may have; raise `max_job_tasks` in [team]"
    )]
    JobFull {
        adding: usize,
        total: usize,
        max: usize,
    },
    #[error(
        "subtask id {id:?} {why}; ids are 1 to {SUBTASK_ID_MAX_BYTES} bytes of A-Z, a-z, 0-9, \
         `_` and `-`"
    )]
    BadId { id: String, why: &'static str },
    #[error(
        "subtask {id:?} has a prompt of {bytes} bytes, more than the {max} a subtask's prompt \
         may have; raise `max_plan_prompt_bytes` in [team]"
    )]
    PromptTooLong {
        id: String,
        bytes: usize,
        max: usize,
    },
    #[error(
        "subtask {id:?} names role {role:?}, which is not a role of this team; declare it with \
         [[plugin]]"
    )]
    UnknownRole { id: String, role: String },
    #[error("subtask {id:?} would be task {task:?}, which the job already has")]
    Taken { id: String, task: String },
    /// Not a DAG of uniquely named subtasks with known dependencies.
    #[error("{0}")]
    Shape(String),
}

/// At most 64 bytes of `s` for an error message, cut on a character.
fn clip(s: &str) -> String {
    crate::plugin::checks::clip(s, SUBTASK_ID_MAX_BYTES)
}

impl PlanLimits {
    /// Checks what a role returned as a plan, in time linear in the plan
    /// and bounded by `max_subtasks`: its size first, then each subtask's
    /// id, prompt and role (`roles` are the team's role plugins; empty
    /// means any role), then that it is a DAG. The plan as the scheduler
    /// takes it, in the role's order.
    pub fn check(&self, plan: &Plan, roles: &[String]) -> Result<Vec<PlannedSubtask>, PlanError> {
        let max = self.max_subtasks.min(PLAN_SUBTASKS_CEILING);
        if plan.subtasks.len() > max {
            return Err(PlanError::TooManySubtasks {
                got: plan.subtasks.len(),
                max,
            });
        }
        for s in &plan.subtasks {
            let why = if s.id.is_empty() {
                Some("is empty")
            } else if s.id.len() > SUBTASK_ID_MAX_BYTES {
                Some("is too long")
            } else if !s
                .id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            {
                Some("has a character other than A-Z, a-z, 0-9, `_` and `-`")
            } else {
                None
            };
            if let Some(why) = why {
                return Err(PlanError::BadId {
                    id: clip(&s.id),
                    why,
                });
            }
            if s.prompt.len() > self.max_prompt_bytes {
                return Err(PlanError::PromptTooLong {
                    id: s.id.clone(),
                    bytes: s.prompt.len(),
                    max: self.max_prompt_bytes,
                });
            }
            if !s.role.is_empty() && !roles.is_empty() && !roles.contains(&s.role) {
                return Err(PlanError::UnknownRole {
                    id: s.id.clone(),
                    role: clip(&s.role),
                });
            }
        }
        // Dependencies are bounded too: no repeats, and only the plan's own
        // subtasks, so at most `max` each.
        plan_order(&plan.subtasks).map_err(PlanError::Shape)?;
        Ok(plan
            .subtasks
            .iter()
            .map(|s| PlannedSubtask {
                id: s.id.clone(),
                prompt: s.prompt.clone(),
                role: s.role.clone(),
                depends_on: s.depends_on.clone(),
            })
            .collect())
    }

    /// Whether a plan of `adding` subtasks, made by a task nested `depth`
    /// deep (0 for a spec task), fits a job that has `tasks` tasks: the
    /// checks that need the job, made by the scheduler in constant time.
    pub fn admit(&self, depth: u32, tasks: usize, adding: usize) -> Result<(), PlanError> {
        let max = self.max_subtasks.min(PLAN_SUBTASKS_CEILING);
        if adding > max {
            return Err(PlanError::TooManySubtasks { got: adding, max });
        }
        if depth + 1 > self.max_depth {
            return Err(PlanError::TooDeep {
                depth: depth + 1,
                max: self.max_depth,
            });
        }
        let total = tasks.saturating_add(adding);
        if total > self.max_job_tasks {
            return Err(PlanError::JobFull {
                adding,
                total,
                max: self.max_job_tasks,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    //! Plans the team refuses, each with the limit it passed.
    use super::*;
    use crate::plugin::Subtask;

    fn st(id: &str, role: &str, deps: &[&str]) -> Subtask {
        Subtask {
            id: id.into(),
            prompt: "p".into(),
            role: role.into(),
            depends_on: deps.iter().map(|d| d.to_string()).collect(),
        }
    }

    fn plan(subtasks: Vec<Subtask>) -> Plan {
        Plan { subtasks }
    }

    #[test]
    fn a_good_plan_comes_back_in_the_roles_order() {
        let p = plan(vec![st("b", "", &["a"]), st("a", "solver", &[])]);
        let got = PlanLimits::default().check(&p, &["solver".into()]).unwrap();
        let ids: Vec<&str> = got.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["b", "a"]);
        assert_eq!(got[0].depends_on, ["a"]);
    }

    #[test]
    fn a_plan_over_the_cap_is_refused_naming_the_key() {
        let p = plan((0..65).map(|i| st(&format!("s{i}"), "", &[])).collect());
        let e = PlanLimits::default().check(&p, &[]).unwrap_err();
        assert_eq!(e, PlanError::TooManySubtasks { got: 65, max: 64 });
        assert!(e.to_string().contains("max_plan_subtasks"), "{e}");
        let raised = PlanLimits {
            max_subtasks: 65,
            ..Default::default()
        };
        assert_eq!(raised.check(&p, &[]).unwrap().len(), 65);
    }

    #[test]
    fn ids_that_could_forge_task_ids_or_addresses_are_refused() {
        for (id, why) in [
            ("", "is empty"),
            ("a.b", "has a character"),
            ("t/0", "has a character"),
            ("a b", "has a character"),
            ("é", "has a character"),
        ] {
            let e = PlanLimits::default()
                .check(&plan(vec![st(id, "", &[])]), &[])
                .unwrap_err();
            assert!(
                matches!(&e, PlanError::BadId { why: w, .. } if w.starts_with(why)),
                "{id:?}: {e}"
            );
        }
        let long = "x".repeat(SUBTASK_ID_MAX_BYTES + 1);
        let e = PlanLimits::default()
            .check(&plan(vec![st(&long, "", &[])]), &[])
            .unwrap_err();
        assert!(
            matches!(&e, PlanError::BadId { id, why: "is too long" } if id.len() < 70),
            "{e}"
        );
    }

    #[test]
    fn long_prompts_unknown_roles_and_cycles_are_refused() {
        let mut big = st("a", "", &[]);
        big.prompt = "x".repeat((16 << 10) + 1);
        let e = PlanLimits::default()
            .check(&plan(vec![big]), &[])
            .unwrap_err();
        assert!(
            matches!(e, PlanError::PromptTooLong { bytes, max: 16384, .. } if bytes == 16385),
            "{e}"
        );
        let e = PlanLimits::default()
            .check(&plan(vec![st("a", "ghost", &[])]), &["solver".into()])
            .unwrap_err();
        assert!(matches!(e, PlanError::UnknownRole { .. }), "{e}");
        let e = PlanLimits::default()
            .check(&plan(vec![st("a", "", &["b"]), st("b", "", &["a"])]), &[])
            .unwrap_err();
        assert!(
            matches!(&e, PlanError::Shape(w) if w.contains("cycle")),
            "{e}"
        );
    }

    #[test]
    fn depth_and_job_size_are_admitted_by_the_scheduler() {
        let l = PlanLimits::default();
        assert_eq!(l.admit(0, 1, 64), Ok(()));
        assert_eq!(l.admit(2, 1, 1), Ok(()), "a depth-3 plan is allowed");
        assert_eq!(
            l.admit(3, 1, 1),
            Err(PlanError::TooDeep { depth: 4, max: 3 })
        );
        assert_eq!(
            l.admit(0, 990, 11),
            Err(PlanError::JobFull {
                adding: 11,
                total: 1001,
                max: 1000
            })
        );
        assert!(l.admit(0, 990, 10).is_ok());
    }
}
