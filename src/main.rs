fn main() -> std::process::ExitCode {
    teatime::cli::main()
}
