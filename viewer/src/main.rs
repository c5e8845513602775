//! The `allocscope` binary: a thin shell over [`allocscope_viewer::cli`].

fn main() -> std::process::ExitCode {
    allocscope_viewer::cli::main_with(std::env::args_os())
}
