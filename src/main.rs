//! The `tillmesh` binary: everything lives in `tillmesh_node::cli`.

fn main() -> std::process::ExitCode {
    tillmesh_node::cli::main()
}
