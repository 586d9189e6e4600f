//! The `bottle` binary: everything lives in the library.

/// See [`bot_bottle_egress::Allocator`]: this program runs the egress proxy.
#[global_allocator]
static ALLOC: bot_bottle_egress::Allocator = bot_bottle_egress::Allocator;

fn main() -> std::process::ExitCode {
    bot_bottle::cli::main()
}
