//! `weft-cni`: the CNI plugin binary. Everything is in the library.

fn main() -> std::process::ExitCode {
    weft_cni::main()
}
