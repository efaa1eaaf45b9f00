// Each toxic type's attributes with their units and defaults (docs/toxics.md), for the
// form that adds or edits one.
export const TOXICS = {
  latency: { latency: ["ms", 0], jitter: ["ms", 0] },
  bandwidth: { rate: ["KB/s", null] },
  slow_close: { delay: ["ms", 0] },
  timeout: { timeout: ["ms", 0] },
  reset_peer: { timeout: ["ms", 0] },
  slicer: { average_size: ["bytes", 1024], size_variation: ["bytes", 0], delay: ["µs", 0] },
  limit_data: { bytes: ["bytes", null] },
  limit_time: { time: ["ms", null] },
};
