// Vocab-parallel cross-entropy, pass 1, one workgroup per token over a chunk of logits
// [rows, n] holding vocabulary columns lo..lo+n. stats[row] = (max, sum exp(x - max),
// target logit, 1 if this chunk owns the target); merged into the existing stats when
// accumulate != 0, so a slice can be processed chunk by chunk.
// Generated constants: WG (a power of two).

struct Params { rows: u32, n: u32, lo: u32, accumulate: u32 }

@group(0) @binding(0) var<storage, read> logits: array<f32>;
@group(0) @binding(1) var<storage, read> targets: array<u32>;
@group(0) @binding(2) var<storage, read_write> stats: array<f32>;
@group(0) @binding(3) var<uniform> p: Params;

var<workgroup> red: array<f32, WG>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let row = flat_group(wid, nwg);
    if (row >= p.rows) { return; }
    let base = row * p.n;
    var m = NEG_BIG;
    for (var c = li; c < p.n; c += WG) { m = max(m, logits[base + c]); }
    red[li] = m;
    workgroupBarrier();
    for (var off = WG / 2u; off > 0u; off /= 2u) {
        if (li < off) { red[li] = max(red[li], red[li + off]); }
        workgroupBarrier();
    }
    let mx = red[0];
    workgroupBarrier();
    var s = 0.0;
    for (var c = li; c < p.n; c += WG) { s += exp(logits[base + c] - mx); }
    red[li] = s;
    workgroupBarrier();
    for (var off = WG / 2u; off > 0u; off /= 2u) {
        if (li < off) { red[li] += red[li + off]; }
        workgroupBarrier();
    }
    if (li == 0u) {
        var new_m = mx;
        var new_s = red[0];
        var tl = 0.0;
        var owns = 0.0;
        let t = targets[row];
        if (t >= p.lo && t - p.lo < p.n) {
            tl = logits[base + t - p.lo];
            owns = 1.0;
        }
        if (p.accumulate != 0u) {
            let om = stats[row * 4u];
            let os = stats[row * 4u + 1u];
            new_m = max(om, mx);
            new_s = os * exp(om - new_m) + red[0] * exp(mx - new_m);
            if (owns == 0.0) {
                tl = stats[row * 4u + 2u];
                owns = stats[row * 4u + 3u];
            }
        }
        stats[row * 4u] = new_m;
        stats[row * 4u + 1u] = new_s;
        stats[row * 4u + 2u] = tl;
        stats[row * 4u + 3u] = owns;
    }
}
