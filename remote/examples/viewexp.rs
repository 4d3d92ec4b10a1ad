#![allow(clippy::print_stdout)]
use std::time::Instant;
use storectl_storage::meta::{Image, Layer};
fn main() {
    let share = std::path::PathBuf::from(std::env::args().nth(1).unwrap());
    let mut layers = Vec::new();
    for id in storectl_storage::list_ids(&share.join("overlay-layers")).unwrap() {
        let b = std::fs::read(share.join("overlay-layers").join(&id).join("layer.json")).unwrap();
        layers.push(storectl_storage::meta::parse_layer(&b, &id).unwrap());
    }
    let mut images = Vec::new();
    for id in storectl_storage::list_ids(&share.join("overlay-images")).unwrap() {
        let b = std::fs::read(share.join("overlay-images").join(&id).join("images.json")).unwrap();
        images.push(storectl_storage::meta::parse_image(&b, &id).unwrap());
    }
    let json = serde_json::to_vec(&(&layers, &images)).unwrap();
    println!("json {} bytes", json.len());
    for _ in 0..3 {
        let t = Instant::now();
        let (l, i): (Vec<Layer>, Vec<Image>) = serde_json::from_slice(&json).unwrap();
        println!("parse {:?} {} {}", t.elapsed(), l.len(), i.len());
        let t = Instant::now();
        let m: std::collections::BTreeMap<String, Layer> =
            l.into_iter().map(|l| (l.id.clone(), l)).collect();
        let n: std::collections::BTreeMap<String, Image> =
            i.into_iter().map(|l| (l.id.clone(), l)).collect();
        println!("maps {:?} {} {}", t.elapsed(), m.len(), n.len());
    }
}
