//! The `conclave` command. Everything it does is in the library; see `cli/`.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
