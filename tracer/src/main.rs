fn main() -> anyhow::Result<()> {
    let obj = hoptrace::ebpf_objects::main_object()?;
    println!("main object: {} bytes", obj.len());
    Ok(())
}
