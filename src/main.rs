fn main() -> std::process::ExitCode {
    teatime::memory::tune_allocator();
    teatime::cli::main()
}
