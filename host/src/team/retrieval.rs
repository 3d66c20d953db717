//! Retrieval-augmented prompting: a task with `context` is given the best
//! passages of an `[[index]]` for its prompt before the job starts, and
//! the run records which ([`Event::Retrieved`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::events::{Event, Observer};
use super::job::JobError;
use super::scheduler::JobTask;
use crate::knowledge::Citation;
use crate::spec::team::TeamSpec;

/// The folder of the index `spec` calls `name`.
pub fn index_dir(spec: &TeamSpec, name: &str) -> Option<PathBuf> {
    let x = spec.indexes.iter().find(|x| x.name == name)?;
    Some(spec.path.parent().unwrap_or(Path::new(".")).join(&x.path))
}

/// Every `[[index]]` of `spec` holds an index this build can search.
pub(super) fn check_indexes(spec: &TeamSpec) -> Result<(), JobError> {
    for x in &spec.indexes {
        let dir = spec.path.parent().unwrap_or(Path::new(".")).join(&x.path);
        if let Err(reason) = crate::knowledge::check(&dir) {
            return Err(JobError::Index {
                spec: spec.path.clone(),
                name: x.name.clone(),
                path: dir,
                reason,
            });
        }
    }
    Ok(())
}

/// Puts the passages of each task's `context` before its prompt (`tasks`
/// in the order of `spec.tasks`), tells `observer`, and says which
/// passages each task was given.
pub(super) fn give_passages(
    spec: &TeamSpec,
    tasks: &mut [JobTask],
    run_id: &str,
    observer: &dyn Observer,
) -> HashMap<String, Vec<Citation>> {
    let mut cited = HashMap::new();
    for (task, section) in tasks.iter_mut().zip(&spec.tasks) {
        let Some(c) = &section.context else { continue };
        let Some(dir) = index_dir(spec, &c.index) else {
            continue;
        };
        let hits = match crate::knowledge::query(&dir, &task.prompt, c.passages) {
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
