//! The `seedcore` binary: everything lives in the library's `cli` module.

fn main() -> std::process::ExitCode {
    seedcore::cli::main()
}
