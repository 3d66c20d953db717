//! Every validation error, with its message and position.
use super::*;
use crate::plugin::Capability;

const OK: &str = "[team]\nname = \"t\"\n\n[[node]]\nname = \"s\"\nbackend = \"sim\"\n\n[[plugin]]\nname = \"solver\"\ngrants = [\"llm\"]\n\n[[task]]\nid = \"a\"\nrole = \"solver\"\nvoter = \"majority\"\nreplicas = 3\n";

fn err(text: &str) -> String {
    TeamSpec::parse(text, Path::new("t.toml"))
        .unwrap_err()
        .to_string()
}

#[test]
fn a_good_spec_loads() {
    let s = TeamSpec::parse(OK, Path::new("t.toml")).unwrap();
    assert_eq!(
        (
            s.team.name.as_str(),
            s.tasks.len(),
            s.plugins[0].grants.clone()
        ),
        ("t", 1, vec![Capability::Llm])
    );
}

#[test]
fn unknown_keys_suggest_the_nearest() {
    let e = err(&OK.replace("replicas = 3", "replica = 3"));
    assert!(
        e.starts_with("t.toml:16:1: [[task]] #1: unknown key `replica`; did you mean `replicas`?"),
        "{e}"
    );
    let e = err(&format!("{OK}\n[tasks]\n"));
    assert!(
        e.contains("unknown section `tasks` (did you mean `task`?)"),
        "{e}"
    );
}

#[test]
fn references_are_checked() {
    let e = err(&OK.replace("voter = \"majority\"", "voter = \"majorty\""));
    assert!(
        e.starts_with("t.toml:15:1: task `a`: no plugin named `majorty`; did you mean `majority`?"),
        "{e}"
    );
    let e = err(&OK.replace("voter = \"majority\"", "voter = \"solver\""));
    assert!(e.contains("`solver` is a role, not a voter"), "{e}");
}

#[test]
fn cycles_and_zero_budgets_are_caught() {
    let two = OK.replace("replicas = 3\n", "replicas = 3\ndepends_on = [\"b\"]\n")
        + "\n[[task]]\nid = \"b\"\nrole = \"solver\"\nvoter = \"majority\"\ndepends_on = [\"a\"]\n";
    assert!(err(&two).contains("form a cycle"), "{}", err(&two));
    let e = err(&OK.replace("replicas = 3", "replicas = 0"));
    assert!(
        e.starts_with("t.toml:16:1: task `a`: `replicas` must be at least 1"),
        "{e}"
    );
}

#[test]
fn a_role_needs_a_node() {
    let e = err(&OK.replace("[[node]]\nname = \"s\"\nbackend = \"sim\"\n", ""));
    assert!(e.contains("no [[node]]"), "{e}");
}

#[test]
fn zero_budgets_name_their_key_and_line() {
    let e = err(&OK.replace("name = \"t\"\n", "name = \"t\"\nmax_tokens = 0\n"));
    assert!(
        e.starts_with("t.toml:3:1: [team]: `max_tokens` must be above zero"),
        "{e}"
    );
    let e = err(&format!("{OK}max_wall = \"0s\"\n"));
    assert!(
        e.starts_with("t.toml:17:1: task `a`: `max_wall` must be above zero"),
        "{e}"
    );
}

#[test]
fn the_answer_task_must_exist() {
    let e = err(&OK.replace("name = \"t\"\n", "name = \"t\"\nanswer = \"b\"\n"));
    assert!(
        e.starts_with("t.toml:3:1: [team]: `answer` names unknown task `b`"),
        "{e}"
    );
}

#[test]
fn a_pinned_node_must_exist() {
    let e = err(&OK.replace(
        "grants = [\"llm\"]",
        "grants = [\"llm\"]\nconfig = { sampling = { node = \"x\" } }",
    ));
    assert!(
        e.starts_with("t.toml:11:1: plugin `solver`: no node named `x` can serve it"),
        "{e}"
    );
    let e = err(&OK.replace(
        "grants = [\"llm\"]",
        "grants = [\"llm\"]\nconfig = { sampling = { tags = [\"gpu\"] } }",
    ));
    assert!(e.contains("no node has all the tags [\"gpu\"]"), "{e}");
}

#[test]
fn instances_of_built_ins_are_checked() {
    let e = err(&OK.replace(
        "name = \"solver\"\n",
        "name = \"s2\"\nbuiltin = \"solvr\"\n",
    ));
    assert!(
        e.contains("plugin `s2`: no built-in named `solvr`; did you mean `solver`?"),
        "{e}"
    );
    let ok = OK
        .replace(
            "name = \"solver\"\n",
            "name = \"s2\"\nbuiltin = \"solver\"\n",
        )
        .replace("role = \"solver\"", "role = \"s2\"");
    assert!(TeamSpec::parse(&ok, Path::new("t.toml")).is_ok());
    let e = err(&ok.replace("role = \"s2\"", "role = \"majority\"\n"));
    assert!(e.contains("`majority` is a voter, not a role"), "{e}");
}

#[test]
fn subtask_settings_are_checked() {
    let e = err(&format!("{OK}subtasks = {{ voter = \"majorty\" }}\n"));
    assert!(
        e.contains("task `a`: no plugin named `majorty`; did you mean `majority`?"),
        "{e}"
    );
}

#[test]
fn a_dag_file_that_cannot_be_read_is_named() {
    let e = err(&format!(
        "{OK}\n[dag]\npath = \"missing.json\"\nrole = \"solver\"\nvoter = \"majority\"\n"
    ));
    assert!(e.starts_with("t.toml:18:1: [dag]: missing.json:"), "{e}");
    let e = err(&format!(
        "{OK}\n[dag]\npath = \"x.json\"\nrole = \"solver\"\nvotr = \"majority\"\n"
    ));
    assert!(e.contains("unknown field `votr`"), "{e}");
}

#[test]
fn caps_that_cannot_work_name_their_key_and_line() {
    let e = err(&OK.replace("name = \"t\"\n", "name = \"t\"\nmax_task_calls = 0\n"));
    assert!(
        e.starts_with("t.toml:3:1: [team]: `max_task_calls` must be at least 1"),
        "{e}"
    );
    let e = err(&OK.replace(
        "name = \"t\"\n",
        "name = \"t\"\n\nmax_plan_subtasks = 20000\n",
    ));
    assert!(
        e.starts_with(
            "t.toml:4:1: [team]: `max_plan_subtasks` is 20000; no team takes more than 10000"
        ),
        "{e}"
    );
    let e = err(&format!("{OK}max_calls = 0\n"));
    assert!(
        e.starts_with("t.toml:17:1: task `a`: `max_calls` must be above zero"),
        "{e}"
    );
    let e = err(&OK.replace("name = \"t\"\n", "name = \"t\"\nmax_plan_subtask = 3\n"));
    assert!(e.contains("unknown field `max_plan_subtask`"), "{e}");
}

#[test]
fn a_value_of_the_wrong_type_is_named_by_its_line_and_key() {
    // The task's table starts on line 12; the value is on line 16.
    let e = err(&OK.replace("replicas = 3", "replicas = \"three\""));
    assert!(
        e.starts_with("t.toml:16:12: [[task]] #1: `replicas`: invalid type: string \"three\""),
        "{e}"
    );
    let e = err(&OK.replace("grants = [\"llm\"]", "grants = \"llm\""));
    assert!(
        e.starts_with("t.toml:10:10: [[plugin]] #1: `grants`: invalid type: string"),
        "{e}"
    );
    // In [team], an unknown key is pointed at where it is, not at [team].
    let e = err(&OK.replace("name = \"t\"", "name = \"t\"\nmax_tokens = \"lots\""));
    assert!(
        e.starts_with("t.toml:3:14: [team]: `max_tokens`: invalid type: string \"lots\""),
        "{e}"
    );
    let e = err(&OK.replace("name = \"t\"", "name = \"t\"\nbogus = 1"));
    assert!(
        e.starts_with("t.toml:3:1: [team]: unknown field `bogus`"),
        "{e}"
    );
}
