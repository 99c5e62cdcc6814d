//! Image preprocessing driven by the manifest: decode, resize the shorter side, centre-crop,
//! scale to [0, 1], normalise per channel, lay out as NCHW.

use super::manifest::ImagePreprocess;
use anyhow::{Context as _, Result};
use image::imageops::FilterType;

/// Most memory one decoded image may take (about 40 megapixels of RGB): a small compressed file
/// can claim a huge canvas, and decoding must not take the host's memory with it.
const MAX_DECODED_BYTES: u64 = 128 << 20;
/// Longest side of an image the host decodes.
const MAX_SIDE: u32 = 16_384;

/// Decode an encoded image (PNG, JPEG) or explain why it cannot be.
pub fn decode(bytes: &[u8]) -> Result<image::RgbImage> {
    let format = image::guess_format(bytes).context("not a recognised image format (PNG and JPEG are supported)")?;
    let mut reader = image::ImageReader::with_format(std::io::Cursor::new(bytes), format);
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_DECODED_BYTES);
    reader.limits(limits);
    let img = reader.decode().map_err(|e| match e {
        image::ImageError::Limits(_) => anyhow::anyhow!(
            "the {format:?} image is too large to decode (at most {MAX_SIDE} pixels a side and {} MiB decoded); resize it first",
            MAX_DECODED_BYTES >> 20
        ),
        e => anyhow::Error::new(e).context(format!("corrupt or truncated {format:?} image")),
    })?;
    if img.width() == 0 || img.height() == 0 {
        anyhow::bail!("the {format:?} image has no pixels");
    }
    Ok(img.to_rgb8())
}

/// One image as `3 * crop * crop` floats, channel-major.
pub fn to_pixel_values(img: &image::RgbImage, p: &ImagePreprocess) -> Vec<f32> {
    let (w, h) = img.dimensions();
    let scale = p.resize as f32 / w.min(h) as f32;
    let (nw, nh) = (((w as f32 * scale).round() as u32).max(p.crop), ((h as f32 * scale).round() as u32).max(p.crop));
    let resized = image::imageops::resize(img, nw, nh, FilterType::CatmullRom);
    let (x0, y0) = ((nw - p.crop) / 2, (nh - p.crop) / 2);
    let side = p.crop as usize;
    let mut out = vec![0f32; 3 * side * side];
    for y in 0..side {
        for x in 0..side {
            let px = resized.get_pixel(x0 + x as u32, y0 + y as u32);
            for c in 0..3 {
                out[c * side * side + y * side + x] = (px[c] as f32 / 255.0 - p.mean[c]) / p.std[c];
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(img: &image::RgbImage) -> Vec<u8> {
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    }

    #[test]
    fn resize_crop_and_normalise() {
        // 40x20: left half red, right half blue. Resize shorter side to 8 -> 16x8, crop 8 keeps
        // the centre: left 4 columns red, right 4 blue.
        let img = image::RgbImage::from_fn(40, 20, |x, _| if x < 20 { image::Rgb([255, 0, 0]) } else { image::Rgb([0, 0, 255]) });
        let p = ImagePreprocess { resize: 8, crop: 8, mean: [0.5, 0.5, 0.5], std: [0.5, 0.5, 0.5] };
        let v = to_pixel_values(&decode(&png(&img)).unwrap(), &p);
        assert_eq!(v.len(), 3 * 64);
        let at = |c: usize, y: usize, x: usize| v[c * 64 + y * 8 + x];
        assert!((at(0, 3, 0) - 1.0).abs() < 1e-3 && (at(2, 3, 0) + 1.0).abs() < 1e-3, "left is red");
        assert!((at(0, 3, 7) + 1.0).abs() < 1e-3 && (at(2, 3, 7) - 1.0).abs() < 1e-3, "right is blue");
        assert!((at(1, 0, 0) + 1.0).abs() < 1e-3, "no green anywhere");
    }

    #[test]
    fn corrupt_images_are_explained() {
        let img = image::RgbImage::new(4, 4);
        let mut bytes = png(&img);
        bytes.truncate(bytes.len() / 2);
        let err = format!("{:#}", decode(&bytes).unwrap_err());
        assert!(err.contains("corrupt or truncated Png"), "{err}");
        let err = format!("{:#}", decode(b"hello world").unwrap_err());
        assert!(err.contains("not a recognised image format"), "{err}");
    }

    /// A PNG whose header claims `side` x `side` pixels, with a valid header checksum.
    fn png_claiming(side: u32) -> Vec<u8> {
        fn crc32(bytes: &[u8]) -> u32 {
            let mut crc = !0u32;
            for &b in bytes {
                crc ^= u32::from(b);
                for _ in 0..8 {
                    crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
                }
            }
            !crc
        }
        let mut bytes = png(&image::RgbImage::new(1, 1));
        bytes[16..20].copy_from_slice(&side.to_be_bytes());
        bytes[20..24].copy_from_slice(&side.to_be_bytes());
        let crc = crc32(&bytes[12..29]);
        bytes[29..33].copy_from_slice(&crc.to_be_bytes());
        bytes
    }

    #[test]
    fn a_small_file_claiming_a_huge_canvas_is_refused() {
        for side in [60_000, 9_000] {
            let err = format!("{:#}", decode(&png_claiming(side)).unwrap_err());
            assert!(err.contains("too large to decode"), "{side}: {err}");
        }
    }
}
