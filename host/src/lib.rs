//! bot-bottle: run AI coding agents in sandboxes (bottles) behind an egress
//! proxy that holds the real credentials.
//!
//! The library does the work; `main.rs` only calls [`cli::main`]. The one
//! flow, stage by stage:
//!
//! 1. [`manifest`] — read `bottle.toml`;
//! 2. [`plugins`] — load the provider and backend plugins;
//! 3. [`plan`] — ask the provider to prepare (its `AgentProvisionPlan`);
//! 4. [`egress_plan`] — merge env and resolve token refs, once, generically;
//! 5. launch and 6. run/tear down — through the backend plugin.

pub mod cli;
pub mod commands;
pub mod egress_plan;
pub mod exposure;
pub mod launch;
pub mod leaks;
pub mod manifest;
pub mod output;
pub mod plan;
pub mod plugins;
pub mod rotation;
pub mod workspace_guard;
