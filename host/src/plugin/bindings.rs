//! Host-side bindings to the `conclave:plugin` worlds, generated from `wit/`.
//!
//! The `role` world carries every interface, so its modules own the shared
//! types; the `verifier` and `voter` bindings reuse them through `with`, which
//! makes a `Task` or `Candidate` one Rust type whichever world it crosses.

/// Bindings for the `role` world (and the shared interfaces).
pub mod role {
    wasmtime::component::bindgen!({
        path: "../wit/0.1",
        world: "role",
        imports: {
            "conclave:plugin/llm.chat": async | trappable,
            default: trappable,
        },
        exports: { default: async },
        additional_derives: [PartialEq, serde::Serialize, serde::Deserialize],
    });
}

/// Bindings for the `verifier` world.
pub mod verifier {
    wasmtime::component::bindgen!({
        path: "../wit/0.1",
        world: "verifier",
        imports: { default: trappable },
        exports: { default: async },
        with: {
            "conclave:plugin/types": super::role::conclave::plugin::types,
            "conclave:plugin/llm": super::role::conclave::plugin::llm,
            "conclave:plugin/log": super::role::conclave::plugin::log,
        },
    });
}

/// Bindings for the `voter` world.
pub mod voter {
    wasmtime::component::bindgen!({
        path: "../wit/0.1",
        world: "voter",
        imports: { default: trappable },
        exports: { default: async },
        with: {
            "conclave:plugin/types": super::role::conclave::plugin::types,
            "conclave:plugin/log": super::role::conclave::plugin::log,
        },
    });
}

/// Bindings for the 0.2 `voter` world: the lean ballot box, texts read
/// through the `ballot-texts` import. Its 0.1 types and `log` are the role
/// world's, so a `Task` or `Decision` is one Rust type for both contracts.
pub mod voter_v2 {
    wasmtime::component::bindgen!({
        path: "../wit/0.2",
        world: "voter",
        imports: { default: trappable },
        exports: { default: async },
        with: {
            "conclave:plugin/types@0.1.0": super::role::conclave::plugin::types,
            "conclave:plugin/log@0.1.0": super::role::conclave::plugin::log,
        },
    });
}

pub use role::conclave::plugin::blackboard;
pub use role::conclave::plugin::bus;
pub use role::conclave::plugin::llm;
pub use role::conclave::plugin::log;
pub use role::conclave::plugin::types;
