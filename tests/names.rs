//! Two images sharing a base layer: the layer is stored once; names, tags,
//! `PATH:TAG` selection, `--name`, reloading, and `rmi` removing only the
//! layers no other image needs.

#![allow(clippy::print_stderr)]

mod common;

use std::collections::BTreeSet;

use common::{strings, Env};
use storectl_fixtures::catalogue::{layered, shared_a, shared_b};
use storectl_fixtures::{
    assert_trees_eq, expected_tree, snapshot, write_docker_archive, write_oci_layout,
};

#[test]
#[ignore = "needs root"]
fn shared_base_layer_tags_and_rmi() {
    require_root!();
    let env = Env::new();
    let images = [shared_a(), shared_b()];
    let oci = env.path("shared-oci");
    let built = write_oci_layout(&oci, &images).unwrap();
    let (a, b) = (&built[0], &built[1]);
    let (name_a, name_b) = (
        images[0].name.clone().unwrap(),
        images[1].name.clone().unwrap(),
    );

    // A layout with two images needs a tag; a wrong tag is a clear error.
    env.run(&["load", &oci.display().to_string()])
        .err_containing("tag");
    env.run(&["load", &format!("{}:nope", oci.display())])
        .err_containing("nope");
    env.assert_store_empty("after failed loads");

    let id_a = env.load_spec(&format!("{}:a", oci.display()), &[]);
    let id_b = env.load_spec(&format!("{}:b", oci.display()), &[]);
    assert_eq!(
        (id_a.as_str(), id_b.as_str()),
        (a.id().as_str(), b.id().as_str())
    );

    let layers_a = env.image_layers(&id_a);
    let layers_b = env.image_layers(&id_b);
    assert_eq!(layers_a, a.chain_ids());
    assert_eq!(layers_b, b.chain_ids());
    assert_eq!(layers_a[0], layers_b[0], "the base layer is shared");
    let all: BTreeSet<String> = layers_a.iter().chain(&layers_b).cloned().collect();
    assert_eq!(all.len(), 3);
    assert_eq!(env.layer_records(), all, "the shared layer is stored once");
    assert_eq!(env.layer_dirs(), all);
    assert!(env.image_names(&id_a).contains(&name_a));
    assert!(env.image_names(&id_b).contains(&name_b));

    // Loading again (and the docker-archive form of the same image) changes nothing.
    let archive = env.path("shared.tar");
    write_docker_archive(&archive, &images).unwrap();
    let again = env.load_spec(&format!("{}:{name_b}", archive.display()), &[]);
    assert_eq!(again, id_b);
    assert_eq!(env.load_spec(&format!("{}:a", oci.display()), &[]), id_a);
    assert_eq!(env.ls().len(), 2);
    assert_eq!(env.layer_records(), all);

    // tag
    env.run(&["tag", &id_a, "localhost/other:v9"]).ok();
    assert!(env
        .image_names(&id_a)
        .contains(&"localhost/other:v9".to_string()));
    let inspect = env.run(&["inspect", "localhost/other:v9"]).ok();
    assert!(inspect.contains(&id_a));
    env.run(&["tag", "localhost/no-such-image:x", "localhost/y:z"])
        .err_containing("no-such-image");
    // Moving a name takes it from its previous owner.
    env.run(&["tag", &id_b, "localhost/other:v9"]).ok();
    assert!(env
        .image_names(&id_b)
        .contains(&"localhost/other:v9".to_string()));
    assert!(!env
        .image_names(&id_a)
        .contains(&"localhost/other:v9".to_string()));

    // rmi of an unknown image is a clear error and changes nothing.
    env.run(&["rmi", "localhost/no-such-image:latest"])
        .err_containing("no-such-image");
    env.run(&["rmi", &"0".repeat(64)]).err();
    assert_eq!(env.ls().len(), 2);

    // rmi of one image keeps the shared layer ...
    env.run(&["rmi", &name_a]).ok();
    let ls = env.ls();
    assert_eq!(ls.len(), 1);
    assert_eq!(ls[0]["id"], id_b.as_str());
    let left: BTreeSet<String> = layers_b.iter().cloned().collect();
    assert_eq!(env.layer_records(), left, "only b's layers remain");
    assert_eq!(env.layer_dirs(), left);
    assert_eq!(env.image_records(), [id_b.clone()].into_iter().collect());
    env.run(&["inspect", &name_a]).err_containing(&name_a);
    // ... and b still mounts and shows the base's files.
    let m = env.mount(&id_b);
    assert_trees_eq(
        &expected_tree(&images[1]),
        &snapshot(&m.path).unwrap(),
        "b after rmi a",
    );
    m.umount();
    // rmi of the other by id: it has two names, so only with --force (as
    // podman); then everything is gone.
    env.run(&["rmi", &id_b]).err_containing("must force");
    env.run(&["rmi", "--force", &id_b]).ok();
    env.assert_store_empty("after removing both images");
    assert!(env.layer_records().is_empty());
}

#[test]
#[ignore = "needs root"]
fn load_with_name_and_short_id() {
    require_root!();
    let env = Env::new();
    let img = layered();
    let oci = env.path("oci");
    let built = write_oci_layout(&oci, std::slice::from_ref(&img)).unwrap();
    let id = env.load(&oci, &["--name", "localhost/renamed:x"]);
    assert_eq!(id, built[0].id());
    let names = env.image_names(&id);
    assert!(
        names.contains(&"localhost/renamed:x".to_string()),
        "{names:?}"
    );
    // An id prefix resolves.
    let out = env.run(&["inspect", &id[..12]]).ok();
    assert!(out.contains(&id));
    // ls --json: fields present.
    let e = env.ls_image(&id);
    for k in ["id", "names", "layers", "size", "created"] {
        assert!(!e[k].is_null(), "ls --json lacks {k}: {e}");
    }
    assert_eq!(strings(&e["layers"]).len(), 3);
}
