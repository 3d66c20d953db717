//! `conclave plugins ...`: list, check and create plugins.

use conclave::plugin::{PluginKind, Registry};

use super::{default_plugin_dir, exit, report, runtime, Kind, Lang, PluginsCmd};

pub async fn run(cmd: PluginsCmd) -> u8 {
    match cmd {
        PluginsCmd::List { dir, json } => {
            let dir = dir.unwrap_or_else(default_plugin_dir);
            let reg = match runtime() {
                Ok(rt) => Registry::open(rt, &dir).await,
                Err(e) => Err(e),
            };
            let reg = match reg {
                Ok(r) => r,
                Err(e) => {
                    report(&e);
                    return exit::FAILURE;
                }
            };
            if json {
                let out = serde_json::json!({
                    "plugins": reg.list(),
                    "refused": reg.failures().into_iter().map(|(p, e)| serde_json::json!({"path": p, "error": e})).collect::<Vec<_>>(),
                });
                println!(
                    "{}",
                    serde_json::to_string_pretty(&out).expect("serialisable")
                );
            } else {
                println!(
                    "{:<16} {:<9} {:<8} {:<8} {:<28} DESCRIPTION",
                    "NAME", "KIND", "VERSION", "CONTRACT", "CAPABILITIES"
                );
                for p in reg.list() {
                    let caps: Vec<String> = p.capabilities.iter().map(|c| c.to_string()).collect();
                    println!(
                        "{:<16} {:<9} {:<8} {:<8} {:<28} {}",
                        p.name,
                        p.kind,
                        p.version,
                        p.contract,
                        caps.join(","),
                        p.description
                    );
                }
                for (path, e) in reg.failures() {
                    eprintln!("refused {}: {e}", path.display());
                }
            }
            if reg.failures().is_empty() {
                exit::OK
            } else {
                exit::BAD_PLUGIN
            }
        }
        PluginsCmd::Check { files } => {
            let rt = match runtime() {
                Ok(rt) => rt,
                Err(e) => {
                    report(&e);
                    return exit::FAILURE;
                }
            };
            let mut code = exit::OK;
            for f in files {
                match rt.load_file(&f).await {
                    Ok(p) => {
                        let caps: Vec<String> = p
                            .descriptor()
                            .capabilities
                            .iter()
                            .map(|c| conclave::Capability::from(*c).to_string())
                            .collect();
                        println!(
                            "ok {}: {} {} {} on contract {} (asks for: {}) sha256 {}",
                            f.display(),
                            conclave::plugin::sandbox::kind_name(p.kind()),
                            p.name(),
                            p.version(),
                            p.contract(),
                            if caps.is_empty() {
                                "nothing".into()
                            } else {
                                caps.join(", ")
                            },
                            &p.hash()[..12]
                        );
                        let wanted: Vec<&String> = caps.iter().filter(|c| *c != "log").collect();
                        if !wanted.is_empty() {
                            let list: Vec<&str> = wanted.iter().map(|c| c.as_str()).collect();
                            println!(
                                "   not granted by asking: a team spec grants {} with `grants = [\"{}\"]` in the plugin's [[plugin]] table",
                                list.join(", "),
                                list.join("\", \"")
                            );
                        }
                    }
                    Err(e) => {
                        report(&e);
                        code = exit::BAD_PLUGIN;
                    }
                }
            }
            code
        }
        PluginsCmd::New {
            name,
            kind,
            lang,
            dir,
        } => {
            let kind = match kind {
                Kind::Role => PluginKind::Role,
                Kind::Verifier => PluginKind::Verifier,
                Kind::Voter => PluginKind::Voter,
            };
            let lang = match lang {
                Lang::Rust => conclave::scaffold::Lang::Rust,
                Lang::Python => conclave::scaffold::Lang::Python,
                Lang::Js => conclave::scaffold::Lang::Js,
            };
            match conclave::scaffold::new_plugin(&name, kind, lang, &dir) {
                Ok(p) => {
                    for f in &p.files {
                        println!("created {}", f.display());
                    }
                    let root = p.root.display();
                    println!("build:  cd {root} && {}", p.build);
                    println!("test:   cd {root} && {}", p.test);
                    println!("check:  conclave plugins check {root}/{}", p.wasm.display());
                    println!("try it: conclave run {root}/team.toml \"What is 2 + 2?\"");
                    exit::OK
                }
                Err(e) => {
                    report(&e);
                    exit::FAILURE
                }
            }
        }
    }
}
