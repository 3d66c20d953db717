//! Loading components: the built-ins, the disk cache, and every kind of file
//! that must be refused with a clear, typed error.

use conclave::plugin::PluginError;
use conclave::{Registry, RuntimeConfig};
use conclave_tests::{fixture, plugin, plugin_dir, runtime, runtime_with};
use std::path::Path;

#[tokio::test]
async fn every_builtin_loads_and_describes_itself() {
    let reg = Registry::open(runtime(), plugin_dir()).await.unwrap();
    assert_eq!(reg.failures(), vec![]);
    let got: Vec<(String, String)> = reg.list().into_iter().map(|p| (p.name, p.kind)).collect();
    let want: Vec<(String, String)> = [
        ("adaptive", "voter"),
        ("answer-format", "verifier"),
        ("borda", "voter"),
        ("coordinator", "role"),
        ("critic", "role"),
        ("llm-judge", "verifier"),
        ("majority", "voter"),
        ("numeric-check", "verifier"),
        ("programmer", "role"),
        ("quorum", "voter"),
        ("solver", "role"),
        ("synthesizer", "role"),
        ("weighted", "voter"),
    ]
    .iter()
    .map(|(n, k)| (n.to_string(), k.to_string()))
    .collect();
    assert_eq!(got, want);
    let judge = reg.get("llm-judge").unwrap();
    assert_eq!(judge.version(), "0.1.0");
    assert!(judge
        .descriptor()
        .capabilities
        .contains(&conclave::plugin::bindings::types::Capability::Llm));
}

#[tokio::test]
async fn garbage_bytes_are_refused() {
    let e = runtime()
        .load_bytes(b"this is not wasm at all".to_vec(), Path::new("junk.wasm"))
        .await
        .unwrap_err();
    assert!(matches!(e, PluginError::NotAComponent { .. }), "{e:?}");
    assert_eq!(
        e.to_string(),
        "junk.wasm: not a WebAssembly component: it is not a WebAssembly file (no `\\0asm` header)"
    );
}

#[tokio::test]
async fn a_core_module_is_refused_with_a_hint() {
    // The smallest valid core module: magic and version 1.
    let e = runtime()
        .load_bytes(b"\0asm\x01\0\0\0".to_vec(), Path::new("core.wasm"))
        .await
        .unwrap_err();
    assert!(matches!(e, PluginError::NotAComponent { .. }), "{e:?}");
    assert!(e.to_string().contains("--target wasm32-wasip2"), "{e}");
}

#[tokio::test]
async fn a_truncated_component_fails_to_compile_and_names_the_file() {
    let bytes = std::fs::read(plugin("majority")).unwrap();
    let e = runtime()
        .load_bytes(bytes[..bytes.len() / 2].to_vec(), Path::new("half.wasm"))
        .await
        .unwrap_err();
    assert!(matches!(e, PluginError::Compile { .. }), "{e:?}");
    assert!(
        e.to_string()
            .starts_with("half.wasm: could not be compiled"),
        "{e}"
    );
}

#[tokio::test]
async fn a_component_for_another_world_is_refused() {
    let e = runtime()
        .load_file(&fixture("wrong-world"))
        .await
        .unwrap_err();
    match &e {
        PluginError::WorldMismatch { reason, .. } => {
            assert!(reason.contains("exports none of `run`"), "{reason}");
            assert!(
                reason.contains("hello"),
                "names what it does export: {reason}"
            );
        }
        other => panic!("expected WorldMismatch, got {other:?}"),
    }
}

#[tokio::test]
async fn mistyped_exports_are_refused_naming_the_export() {
    let e = runtime().load_file(&fixture("mistyped")).await.unwrap_err();
    match &e {
        PluginError::WorldMismatch { world, reason, .. } => {
            assert_eq!(world, "voter");
            assert!(
                reason.contains("describe") || reason.contains("tally"),
                "{reason}"
            );
        }
        other => panic!("expected WorldMismatch, got {other:?}"),
    }
}

#[tokio::test]
async fn a_future_contract_version_is_refused() {
    let e = runtime()
        .load_file(&fixture("future-version"))
        .await
        .unwrap_err();
    match &e {
        PluginError::UnsupportedVersion {
            found, supported, ..
        } => {
            assert_eq!(found, "0.3.0");
            assert_eq!(supported, "0.1.0 and 0.2.0");
        }
        other => panic!("expected UnsupportedVersion, got {other:?}"),
    }
    assert!(e.to_string().contains("rebuild the plugin"), "{e}");
}

#[tokio::test]
async fn a_directory_with_bad_files_loads_the_good_ones_and_reports_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(plugin("majority"), dir.path().join("majority.wasm")).unwrap();
    std::fs::write(dir.path().join("broken.wasm"), b"nope").unwrap();
    std::fs::copy(fixture("wrong-world"), dir.path().join("other.wasm")).unwrap();
    std::fs::write(dir.path().join("README.txt"), b"not a plugin, ignored").unwrap();
    let reg = Registry::open(runtime(), dir.path()).await.unwrap();
    assert_eq!(
        reg.list()
            .iter()
            .map(|p| p.name.as_str())
            .collect::<Vec<_>>(),
        vec!["majority"]
    );
    let failures = reg.failures();
    assert_eq!(failures.len(), 2);
    assert!(
        failures[0].0.ends_with("broken.wasm") && failures[0].1.contains("not a WebAssembly file")
    );
    assert!(failures[1].0.ends_with("other.wasm") && failures[1].1.contains("does not fit"));
}

#[tokio::test]
async fn an_unknown_name_lists_what_is_loaded() {
    let reg = Registry::open(runtime(), plugin_dir()).await.unwrap();
    let e = reg.get("majorty").unwrap_err();
    assert!(matches!(e, PluginError::NotFound { .. }));
    let msg = e.to_string();
    assert!(
        msg.starts_with(
            "no plugin named \"majorty\" is loaded (loaded: adaptive, answer-format, borda,"
        ),
        "{msg}"
    );
}

#[tokio::test]
async fn compiled_components_are_cached_on_disk_and_bad_entries_are_replaced() {
    let cache = tempfile::tempdir().unwrap();
    let config = || RuntimeConfig {
        cache_dir: Some(cache.path().to_path_buf()),
        ..Default::default()
    };
    // `runtime_with` would redirect the cache; build these directly.
    let rt = std::sync::Arc::new(conclave::PluginRuntime::new(config()).unwrap());
    let p = rt.load_file(&plugin("quorum")).await.unwrap();
    let entries: Vec<_> = std::fs::read_dir(cache.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    let key =
        conclave::plugin::cache::cache_key(rt.engine(), &std::fs::read(plugin("quorum")).unwrap());
    assert_eq!(
        entries[0].file_name().unwrap().to_str().unwrap(),
        format!("{key}.cwasm")
    );

    // A second runtime (same engine settings) loads from the cache.
    let rt2 = conclave::PluginRuntime::new(config()).unwrap();
    assert_eq!(
        rt2.load_file(&plugin("quorum")).await.unwrap().hash(),
        p.hash()
    );

    // A corrupt entry is recompiled and rewritten.
    std::fs::write(&entries[0], b"corrupt").unwrap();
    let rt3 = conclave::PluginRuntime::new(config()).unwrap();
    assert_eq!(
        rt3.load_file(&plugin("quorum")).await.unwrap().name(),
        "quorum"
    );
    assert!(
        std::fs::metadata(&entries[0]).unwrap().len() > 1000,
        "entry rewritten"
    );
}

#[tokio::test]
async fn loading_without_a_cache_works() {
    let rt = runtime_with(RuntimeConfig {
        cache_dir: None,
        pooling: false,
        ..Default::default()
    });
    assert!(!rt.is_pooling());
    assert_eq!(
        rt.load_file(&plugin("borda")).await.unwrap().name(),
        "borda"
    );
}
