//! The `tillmesh` binary: everything lives in `tillmesh_node::cli`.

fn main() -> anyhow::Result<()> {
    tillmesh_node::cli::main()
}
