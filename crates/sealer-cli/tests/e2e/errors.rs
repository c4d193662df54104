//! Errors keep their cause: a refused connection is named by `pull` and by `build` (base
//! and dependency pulls); pasted transport prefixes are understood or explained.

use crate::support::*;

/// `127.0.0.1:PORT` where nothing listens.
fn closed_port() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = listener.local_addr().expect("address").to_string();
    drop(listener);
    address
}

#[test]
fn pull_names_the_refused_connection_and_accepts_the_docker_transport() {
    let work = temp();
    let sealer = Sealer::new(work.path().join("store"));
    let host = closed_port();
    for image in [format!("{host}/x:1"), format!("docker://{host}/x:1")] {
        let out = sealer.fails(&["pull", &image]);
        assert!(out.contains("Connection refused"), "{image}: {out}");
        assert!(!out.contains("port must be a number"), "{image}: {out}");
    }
    let out = sealer.fails(&["pull", "docker-archive:/tmp/a.tar"]);
    assert!(
        out.contains("is a transport") && out.contains("sealer load -i FILE"),
        "{out}"
    );
}

#[test]
fn build_names_the_cause_of_a_failed_base_or_dependency_pull() {
    let work = temp();
    let sealer = Sealer::new(work.path().join("store"));
    let host = closed_port();
    let context = work.path().join("context");
    std::fs::create_dir_all(&context).expect("mkdir");
    std::fs::write(context.join("Kubefile"), format!("FROM {host}/base:1\n")).expect("write");
    let out = sealer.fails(&["build", "-t", "x:1", arg(&context)]);
    assert!(out.contains("Connection refused"), "base: {out}");

    std::fs::write(
        context.join("pod.yaml"),
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: x\nspec:\n  containers:\n  \
             - name: x\n    image: {host}/dep:1\n"
        ),
    )
    .expect("write");
    std::fs::write(
        context.join("Kubefile"),
        "FROM scratch\nCOPY pod.yaml manifests/\n",
    )
    .expect("write");
    let out = sealer.fails(&["build", "-t", "x:1", arg(&context)]);
    assert!(out.contains(&format!("{host}/dep:1")), "dependency: {out}");
    assert!(out.contains("Connection refused"), "dependency: {out}");
}
