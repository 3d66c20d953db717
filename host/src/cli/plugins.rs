//! `conclave plugins ...`: list, check and create plugins.

use conclave::plugin::{PluginKind, Registry};

use super::{default_plugin_dir, exit, report, runtime, Kind, PluginsCmd};

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
                    "{:<16} {:<9} {:<8} {:<28} DESCRIPTION",
                    "NAME", "KIND", "VERSION", "CAPABILITIES"
                );
                for p in reg.list() {
                    let caps: Vec<String> = p.capabilities.iter().map(|c| c.to_string()).collect();
                    println!(
                        "{:<16} {:<9} {:<8} {:<28} {}",
                        p.name,
                        p.kind,
                        p.version,
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
                            "ok {}: {} {} {} (asks for: {}) sha256 {}",
                            f.display(),
                            conclave::plugin::sandbox::kind_name(p.kind()),
                            p.name(),
                            p.version(),
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
            dir,
            sdk,
        } => {
            let kind = match kind {
                Kind::Role => PluginKind::Role,
                Kind::Verifier => PluginKind::Verifier,
                Kind::Voter => PluginKind::Voter,
            };
            let sdk = sdk.unwrap_or_else(conclave::scaffold::default_sdk_path);
            match conclave::scaffold::new_plugin(&name, kind, &dir, &sdk) {
                Ok(files) => {
                    for f in &files {
                        println!("created {}", f.display());
                    }
                    println!(
                        "build it with: cd {} && cargo build --release\nthe component: target/wasm32-wasip2/release/{}.wasm",
                        dir.join(&name).display(),
                        name.replace('-', "_")
                    );
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
