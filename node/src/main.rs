//! The `tillmesh` binary: everything lives in the library's `cli` module.

fn main() -> anyhow::Result<()> {
    tillmesh_node::cli::main()
}
