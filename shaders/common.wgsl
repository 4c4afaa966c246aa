// Prepended to every kernel of this folder (after the kernel's generated constants).

// Flat index of an invocation in a 2D grid of 1D workgroups of `wg_size` invocations
// (dispatches wrap to a second dimension past the 65535-workgroup limit).
fn flat_index(gid: vec3<u32>, nwg: vec3<u32>, wg_size: u32) -> u32 {
    return gid.y * nwg.x * wg_size + gid.x;
}

// Flat index of a workgroup in a 2D grid.
fn flat_group(wid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wid.y * nwg.x + wid.x;
}

const NEG_BIG: f32 = -3.0e38;
