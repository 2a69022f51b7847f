//! The `tillmesh` binary: everything lives in `tillmesh_node::cli`; `tillmesh demo` ends with
//! the QuickBooks bridge's act from `tillmesh::bridge_demo`.

// glibc's allocator grows and trims per-thread arenas under the writer's and the preparers'
// allocation pattern; mimalloc keeps that off the hot path.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    tillmesh_node::cli::main_with(Some(Box::new(|mesh| {
        Box::pin(tillmesh::bridge_demo::run(mesh))
    })))
}
