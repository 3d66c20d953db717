//! The end-to-end suite, one binary (so it links once). Each module covers
//! one area and says so in its first line.

mod builtins;
mod calibrate;
mod chaos;
mod cli;
mod clients;
mod cluster;
mod cluster_auth;
mod consensus;
mod contract;
mod durable;
mod embedded;
mod eval;
mod failover;
mod hostile;
mod hostile_team;
mod hot_swap;
mod hot_swap_serve;
mod job;
mod journal;
mod journal_crash;
mod loading;
mod otel;
mod patterns;
mod programmer;
mod router;
mod scaffold;
mod scheduler;
mod serve_teams;
mod server;
mod spec_sandbox;
mod trust;
mod ui;
mod ui_browser;
mod workers;
mod workers_coordinators;
