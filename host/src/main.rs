//! The `bottle` binary: everything lives in the library.

fn main() -> std::process::ExitCode {
    bot_bottle::cli::main()
}
