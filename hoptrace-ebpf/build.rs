use which::which;

/// bpf-linker is the linker of the BPF target; rebuild when it changes.
fn main() {
    if let Ok(bpf_linker) = which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", bpf_linker.display());
    }
}
