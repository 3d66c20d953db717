//! Retrieval-augmented prompting: a task with `context` is given the best
//! passages of an `[[index]]` for its prompt before the job starts, and
//! the run records which ([`Event::Retrieved`]).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use super::events::{Event, Observer};
use super::job::JobError;
use super::scheduler::JobTask;
use crate::knowledge::{Citation, Searcher};
use crate::spec::team::TeamSpec;

/// The team's indexes, opened (shared with the other teams of this
/// process that name the same folder), by the team's name for each.
pub(super) struct Indexes(HashMap<String, Arc<Searcher>>);

/// Opens every `[[index]]` of `spec`: each must hold an index this build
/// can search.
pub(super) fn open_indexes(spec: &TeamSpec) -> Result<Indexes, JobError> {
    let mut open = HashMap::new();
    for x in &spec.indexes {
        let dir = spec.path.parent().unwrap_or(Path::new(".")).join(&x.path);
        let searcher = crate::knowledge::check(&dir)
            .and_then(|()| Searcher::shared(&dir))
            .map_err(|reason| JobError::Index {
                spec: spec.path.clone(),
                name: x.name.clone(),
                path: dir,
                reason,
            })?;
        open.insert(x.name.clone(), searcher);
    }
    Ok(Indexes(open))
}

impl Indexes {
    /// Puts the passages of each task's `context` before its prompt (`tasks`
    /// in the order of `spec.tasks`), tells `observer`, and says which
    /// passages each task was given.
    pub(super) fn give(
        &self,
        spec: &TeamSpec,
        tasks: &mut [JobTask],
        run_id: &str,
        observer: &dyn Observer,
    ) -> HashMap<String, Vec<Citation>> {
        let mut cited = HashMap::new();
        for (task, section) in tasks.iter_mut().zip(&spec.tasks) {
            let Some(c) = &section.context else { continue };
            let Some(searcher) = self.0.get(&c.index) else {
                continue;
            };
            let hits = match searcher.search(&task.prompt, c.passages) {
                Ok(h) => h,
                Err(e) => {
                    tracing::warn!(
                        "task {}: no passages from index `{}`: {e}",
                        task.id,
                        c.index
                    );
                    Vec::new()
                }
            };
            let passages: Vec<Citation> = hits.iter().map(|h| h.citation(&c.index)).collect();
            observer.event(
                run_id,
                &Event::Retrieved {
                    task: task.id.clone(),
                    index: c.index.clone(),
                    passages: passages.clone(),
                },
            );
            task.prompt = crate::knowledge::with_passages(&task.prompt, &c.index, &hits);
            cited.insert(task.id.clone(), passages);
        }
        cited
    }
}
