fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        // Placeholder CLI glue until the lead's clap CLI lands.
        Some("check") => std::process::exit(hoptrace::capabilities::run_check(
            args.iter().any(|a| a == "--json"),
        )),
        Some("cleanup") => {
            let netns = args
                .iter()
                .position(|a| a == "--netns")
                .and_then(|i| args.get(i + 1));
            std::process::exit(hoptrace::cleanup::run_cleanup(
                netns.map(std::path::Path::new),
            ))
        }
        _ => {
            let obj = hoptrace::ebpf_objects::main_object()?;
            println!("main object: {} bytes", obj.len());
            Ok(())
        }
    }
}
