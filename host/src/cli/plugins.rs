//! `conclave plugins ...`: list, check, create, sign and verify plugins.

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
        PluginsCmd::Keygen { out } => keygen(&out),
        PluginsCmd::Sign { files, key } => sign(&files, &key),
        PluginsCmd::Verify { files, trusted } => verify(&files, &trusted),
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

/// The SHA-256 of a component file, as the host computes it at load.
fn component_hash(file: &std::path::Path) -> Result<String, String> {
    std::fs::read(file)
        .map(|b| conclave::plugin::cache::content_hash(&b))
        .map_err(|e| format!("{}: {e}", file.display()))
}

fn keygen(out: &std::path::Path) -> u8 {
    use conclave::plugin::signature::SecretKey;
    let public = out.with_extension(match out.extension() {
        Some(e) => format!("{}.pub", e.to_string_lossy()),
        None => "pub".into(),
    });
    if out.exists() {
        eprintln!(
            "error: {} exists; a key file is never overwritten",
            out.display()
        );
        return exit::FAILURE;
    }
    let key = match SecretKey::generate() {
        Ok(k) => k,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::FAILURE;
        }
    };
    let written = {
        use std::io::Write;
        let mut o = std::fs::OpenOptions::new();
        o.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            o.mode(0o600);
        }
        o.open(out)
            .and_then(|mut f| f.write_all(key.to_file_text().as_bytes()))
            .and_then(|()| std::fs::write(&public, format!("{}\n", key.public())))
    };
    if let Err(e) = written {
        eprintln!("error: {}: {e}", out.display());
        return exit::FAILURE;
    }
    println!("secret key: {} (keep it to yourself)", out.display());
    println!("public key: {} ({})", key.public(), public.display());
    println!("trust it:   [team] trusted_keys = [\"{}\"]", key.public());
    exit::OK
}

fn sign(files: &[std::path::PathBuf], key: &std::path::Path) -> u8 {
    use conclave::plugin::signature::{sig_path, SecretKey};
    let key = match std::fs::read_to_string(key)
        .map_err(|e| e.to_string())
        .and_then(|t| SecretKey::parse(&t))
    {
        Ok(k) => k,
        Err(e) => {
            eprintln!("error: {}: {e}", key.display());
            return exit::FAILURE;
        }
    };
    let mut code = exit::OK;
    for f in files {
        let signed = component_hash(f)
            .and_then(|h| key.sign(&h).map(|s| (h, s)))
            .and_then(|(h, s)| {
                let sig = sig_path(f);
                std::fs::write(&sig, s)
                    .map(|()| (h, sig))
                    .map_err(|e| format!("{}: {e}", sig_path(f).display()))
            });
        match signed {
            Ok((h, sig)) => println!(
                "{}: signed (sha256 {}) by {} -> {}",
                f.display(),
                &h[..12],
                key.public().short(),
                sig.display()
            ),
            Err(e) => {
                eprintln!("error: {e}");
                code = exit::FAILURE;
            }
        }
    }
    code
}

fn verify(files: &[std::path::PathBuf], trusted: &[String]) -> u8 {
    use conclave::plugin::signature::{read_signature, sig_path, verify, PublicKey, Trust};
    let keys: Result<Vec<PublicKey>, String> =
        trusted.iter().map(|k| PublicKey::from_arg(k)).collect();
    let trust = match keys {
        Ok(k) => Trust::new(k),
        Err(e) => {
            eprintln!("error: --trusted-key {e}");
            return exit::USAGE;
        }
    };
    let mut code = exit::OK;
    for f in files {
        let checked = component_hash(f).and_then(|h| {
            let sig = sig_path(f);
            let text = read_signature(&sig)
                .map_err(|e| format!("{}: no signature ({}: {e})", f.display(), sig.display()))?;
            let key = verify(&text, &h).map_err(|e| format!("{}: {e}", sig.display()))?;
            trust
                .check(f, &h)
                .map_err(|e| format!("{}: {e}", f.display()))?;
            Ok((h, key))
        });
        match checked {
            Ok((h, key)) => println!(
                "{}: signed by {key} (sha256 {}){}",
                f.display(),
                &h[..12],
                if trust.enforced() {
                    ", a trusted key"
                } else {
                    ""
                }
            ),
            Err(e) => {
                eprintln!("error: {e}");
                code = exit::BAD_PLUGIN;
            }
        }
    }
    code
}
