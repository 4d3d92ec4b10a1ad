//! What the store's unit tests build on: records made up in memory, and
//! stores on a temporary directory — local, a writer on its share, a reader
//! of that share — with images loaded from fixtures.

use storectl_fixtures::{
    write_oci_layout, Compression, Entry, Image as Fixture, Layer as FixtureLayer,
};

use super::*;

/// A 64-hex id made from `label`.
pub(super) fn id(label: &str) -> String {
    sha256_digest(label.as_bytes())
        .trim_start_matches("sha256:")
        .to_string()
}

/// A layer record `id` on `parent`.
pub(super) fn layer(id: &str, parent: Option<&str>, shared: bool) -> Layer {
    let mut l = meta::parse_layer(format!(r#"{{"id":"{id}"}}"#).as_bytes(), id).unwrap();
    l.parent = parent.map(str::to_string);
    l.shared = shared;
    l
}

/// An image record `id` on layer `top`, with `names`.
pub(super) fn image(id: &str, top: &str, names: &[&str], shared: bool) -> Image {
    let json = format!(r#"{{"id":"{id}","layer":"{top}"}}"#);
    let mut i = meta::parse_image(json.as_bytes(), id).unwrap();
    i.names = names.iter().map(|n| n.to_string()).collect();
    i.shared = shared;
    i
}

/// A local store at `tmp/root`.
pub(super) fn local(tmp: &Path) -> Store {
    Store::open(StoreOptions::new(tmp.join("root"))).unwrap()
}

/// `root`'s `overlay`, `overlay-layers` and `overlay-images`, each with its
/// `RO` link into the same directory of `share` (as `storectl init` makes
/// them).
fn wire(root: &Path, share: &Path) {
    for d in ["overlay", "overlay-layers", "overlay-images"] {
        fs::create_dir_all(share.join(d)).unwrap();
        fs::create_dir_all(root.join(d)).unwrap();
        let ro = root.join(d).join(RO);
        if fs::symlink_metadata(&ro).is_err() {
            std::os::unix::fs::symlink(share.join(d), ro).unwrap();
        }
    }
}

fn open(root: PathBuf, role: Role, share: &Path, hook: Option<MakeShareHook>) -> Store {
    wire(&root, share);
    Store::open(StoreOptions {
        config: Some(RootConfig {
            role,
            shared: Some(share.to_path_buf()),
            ..RootConfig::default()
        }),
        share_hook: hook,
        ..StoreOptions::new(root)
    })
    .unwrap()
}

/// A writer root `tmp/root` on share `tmp/share`, with a share hook that
/// records its calls ([`Recorder`]; storectl-remote's writer, which keeps
/// containers/storage's index, is tested there).
pub(super) fn writer(tmp: &Path) -> Store {
    open(
        tmp.join("root"),
        Role::Writer,
        &tmp.join("share"),
        Some(Recorder::make),
    )
}

/// [`writer`] without a share hook.
pub(super) fn writer_without_hook(tmp: &Path) -> Store {
    open(tmp.join("root"), Role::Writer, &tmp.join("share"), None)
}

/// A reader root `tmp/reader` of share `tmp/share`.
pub(super) fn reader(tmp: &Path) -> Store {
    open(tmp.join("reader"), Role::Reader, &tmp.join("share"), None)
}

/// A share hook that does nothing but note each call, as
/// `method(argument)` (ids shortened to 8 characters).
#[derive(Debug, Default)]
pub(super) struct Recorder(parking_lot::Mutex<Vec<String>>);

impl Recorder {
    fn make(_: &Layout) -> Box<dyn ShareHook> {
        Box::<Recorder>::default()
    }

    fn note(&self, call: &str, arg: &str) {
        let arg: String = arg.chars().take(8).collect();
        self.0.lock().push(format!("{call}({arg})"));
    }

    /// The calls `store`'s recorder noted since the last time, taken.
    pub(super) fn take(store: &Store) -> Vec<String> {
        let hook = store.share_hook().expect("a writer with a recorder");
        let recorder = hook.as_any().downcast_ref::<Recorder>().unwrap();
        std::mem::take(&mut *recorder.0.lock())
    }
}

impl ShareHook for Recorder {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
    fn read_from_index(&self, _: IndexLines) {
        self.note("read_from_index", "");
    }
    fn read_from_records(&self) {
        self.note("read_from_records", "");
    }
    fn before_mutation(&self, _: &Store, _: &str) -> Result<()> {
        self.note("before_mutation", "");
        Ok(())
    }
    fn sweeping(&self, _: &Store, _: &str) -> Result<()> {
        self.note("sweeping", "");
        Ok(())
    }
    fn swept(&self, _: &Store) -> Result<()> {
        self.note("swept", "");
        Ok(())
    }
    fn layer_published(&self, id: &str) -> Result<()> {
        self.note("layer_published", id);
        Ok(())
    }
    fn image_staged(&self, image: &Image, staging: &Path) -> Result<()> {
        assert!(staging.join(IMAGES_JSON).is_file(), "staged whole");
        self.note("image_staged", &image.id);
        Ok(())
    }
    fn image_changed(&self, id: &str) {
        self.note("image_changed", id);
    }
    fn removing_layer(&self, id: &str) -> Result<()> {
        self.note("removing_layer", id);
        Ok(())
    }
    fn before_generation(&self, _: &State, _: &str, _: crate::Change<'_>) -> Result<()> {
        self.note("before_generation", "");
        Ok(())
    }
}

/// Load an image named `name` (`localhost/…`) whose layers hold one file
/// each, `(path, contents)`, base first, from an OCI layout under `tmp`.
pub(super) fn load(store: &Store, tmp: &Path, name: &str, files: &[(&str, &str)]) -> Image {
    let layers = files
        .iter()
        .map(|(path, text)| FixtureLayer::new(vec![Entry::file(path, *text)], Compression::Gzip))
        .collect();
    let oci = tmp.join(format!("oci-{}", unique_suffix()));
    write_oci_layout(&oci, &[Fixture::new(layers).named(name)]).unwrap();
    let source = oci.display().to_string();
    let loaded = store.load(&source, &LoadOptions::default(), &crate::NoopReporter);
    loaded.unwrap()
}

/// What the reader's refresher would hand it for everything `writer` has
/// shared.
pub(super) fn shared_delta(writer: &Store) -> SharedDelta {
    writer.with_state(|st| {
        let mut layers: Vec<Layer> = st.layers.values().filter(|l| l.shared).cloned().collect();
        // Parents first, as a scan hands them.
        layers.sort_by_key(|l| st.chain(&l.id).map_or(0, |c| c.len()));
        SharedDelta {
            add_layers: layers,
            add_images: st.images.values().filter(|i| i.shared).cloned().collect(),
            ..SharedDelta::default()
        }
    })
}

/// The names in `dir`, sorted (dot entries too).
pub(super) fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Shared layer `id` put on `share` by hand (as a writer leaves it): its
/// overlay dir with `diff/file` ("shared") and a `link` file naming
/// `short`, and its record.
pub(super) fn layer_on_share(share: &Path, id: &str, short: &str) -> Layer {
    let dir = share.join("overlay").join(id);
    fs::create_dir_all(dir.join("diff")).unwrap();
    fs::write(dir.join("diff/file"), "shared").unwrap();
    fs::write(dir.join("link"), short).unwrap();
    let record = share.join("overlay-layers").join(id);
    fs::create_dir_all(&record).unwrap();
    fs::write(record.join(LAYER_JSON), format!(r#"{{"id":"{id}"}}"#)).unwrap();
    layer(id, None, false)
}
