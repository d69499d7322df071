fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        // Placeholder CLI glue until the lead's clap CLI lands.
        Some("check") => std::process::exit(hoptrace::capabilities::run_check(
            args.iter().any(|a| a == "--json"),
        )),
        _ => {
            let obj = hoptrace::ebpf_objects::main_object()?;
            println!("main object: {} bytes", obj.len());
            Ok(())
        }
    }
}
