//! Each decoder round-trips, and the bound stops a bomb.

use std::io::Write;

use super::*;

fn payload() -> Vec<u8> {
    (0..300_000u32)
        .flat_map(|i| (i % 251).to_le_bytes())
        .collect()
}

fn gz(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn xz(data: &[u8]) -> Vec<u8> {
    let mut w =
        lzma_rust2::XzWriter::new(Vec::new(), lzma_rust2::XzOptions::with_preset(1)).unwrap();
    w.write_all(data).unwrap();
    w.finish().unwrap()
}

fn zstd(data: &[u8]) -> Vec<u8> {
    ruzstd::encoding::compress_to_vec(data, ruzstd::encoding::CompressionLevel::Fastest)
}

fn lz4_frame(data: &[u8]) -> Vec<u8> {
    let mut w = lz4_flex::frame::FrameEncoder::new(Vec::new());
    w.write_all(data).unwrap();
    w.finish().unwrap()
}

/// The legacy format, with the 4-byte size trailer kernels append.
fn lz4_legacy(data: &[u8]) -> Vec<u8> {
    let mut out = 0x184C_2102u32.to_le_bytes().to_vec();
    for chunk in data.chunks(LZ4_LEGACY_BLOCK) {
        let block = lz4_flex::block::compress(chunk);
        out.extend_from_slice(&(block.len() as u32).to_le_bytes());
        out.extend_from_slice(&block);
    }
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
}

fn run(compressed: &[u8], wanted: Compression, limit: u64) -> Result<Vec<u8>, DecompressError> {
    let dir = tempfile::tempdir().unwrap();
    let (src, dest) = (dir.path().join("in"), dir.path().join("out"));
    std::fs::write(&src, compressed).unwrap();
    let cancel = CancellationToken::new();
    decompress_file(
        &src,
        "in",
        &dest,
        wanted,
        limit,
        &Progress::silent(),
        &cancel,
    )?;
    Ok(std::fs::read(&dest).unwrap())
}

#[test]
fn every_format_round_trips_when_sniffed() {
    let data = payload();
    for (name, c) in [
        ("gz", gz(&data)),
        ("xz", xz(&data)),
        ("zstd", zstd(&data)),
        ("lz4 frame", lz4_frame(&data)),
        ("lz4 legacy", lz4_legacy(&data)),
    ] {
        let out = run(&c, Compression::Auto, u64::MAX).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(out == data, "{name} differs");
    }
}

#[test]
fn concatenated_zstd_frames_are_all_read() {
    let mut both = zstd(b"first ");
    both.extend(zstd(b"second"));
    assert_eq!(run(&both, Compression::Zstd, 100).unwrap(), b"first second");
}

#[test]
fn output_past_the_bound_is_a_bomb() {
    let zeros = vec![0u8; 4 << 20];
    let err = run(&gz(&zeros), Compression::Gz, 1 << 20).unwrap_err();
    assert!(
        matches!(err, DecompressError::Bomb { limit, .. } if limit == 1 << 20),
        "{err}"
    );
}

#[test]
fn corrupt_input_is_an_error() {
    let mut c = gz(&payload());
    let mid = c.len() / 2;
    c[mid..mid + 64].fill(0xff);
    assert!(matches!(
        run(&c, Compression::Gz, u64::MAX),
        Err(DecompressError::Corrupt { .. })
    ));
}

#[test]
fn unknown_data_under_auto_is_refused() {
    assert!(matches!(
        run(b"plain text", Compression::Auto, 100),
        Err(DecompressError::Unknown { .. })
    ));
}
