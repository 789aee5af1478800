package dev.edgeq.core;

import org.json.JSONArray;
import org.json.JSONException;
import org.json.JSONObject;

/**
 * The benchmark results JSON, in the shape of {@code edgeq profile --json} where they
 * overlap (load_ms, latency_ms, samples_ms, memory, threads, inputs, delegates), plus the
 * golden check. The app writes it to {@code files/benchmark_results.json}.
 */
public final class BenchmarkResults {
  public static final int RUNNER_VERSION = 1;

  private BenchmarkResults() {}

  /** What the app measured; memory figures in bytes (-1 when not available). */
  public static final class Measured {
    public String runtime = "";
    public String device = "";
    public int threadsUsed = -1;
    public int warmup;
    public double loadMs;
    public double[] samplesMs = new double[0];
    public long baselineBytes = -1;
    public long peakBytes = -1;
    public long finalBytes = -1;
    public String memorySource = "";
    public Vectors.GoldenResult golden; // null: the bundle has no golden output
  }

  public static JSONObject toJson(Bundle bundle, Measured m) throws JSONException {
    LatencyStats s = LatencyStats.of(m.samplesMs);
    JSONObject j = new JSONObject();
    j.put("runner_version", RUNNER_VERSION);
    j.put("runner", "edgeq android-demo");
    j.put("artifact", bundle.dir.getPath());
    j.put("bundle_id", bundle.id);
    j.put("model", bundle.modelName);
    j.put("model_file", bundle.modelFile);
    j.put("format", bundle.format);
    j.put("runtime", m.runtime);
    j.put("delegates", new JSONArray(bundle.delegates));
    JSONArray inputs = new JSONArray();
    for (Bundle.TensorSpec t : bundle.inputs) {
      JSONArray shape = new JSONArray();
      for (long d : t.shape) shape.put(d);
      inputs.put(new JSONObject().put("name", t.name).put("shape", shape).put("dtype", t.dtype));
    }
    j.put("inputs", inputs);
    j.put("host", new JSONObject().put("device", m.device));
    j.put("threads", new JSONObject().put("requested", bundle.threads).put("used", m.threadsUsed).put("source", "bundle"));
    j.put("warmup", m.warmup);
    j.put("runs", m.samplesMs.length);
    j.put("load_ms", m.loadMs);
    j.put("latency_ms", new JSONObject().put("min", s.min).put("p50", s.p50).put("p90", s.p90).put("max", s.max)
        .put("mean", s.mean).put("stdev", s.stdev));
    JSONArray samples = new JSONArray();
    for (double x : m.samplesMs) samples.put(x);
    j.put("samples_ms", samples);
    boolean available = m.peakBytes >= 0;
    j.put("memory", new JSONObject().put("available", available).put("baseline_rss_bytes", m.baselineBytes)
        .put("peak_rss_bytes", m.peakBytes)
        .put("model_attributable_bytes", available && m.baselineBytes >= 0 ? m.peakBytes - m.baselineBytes : -1)
        .put("final_rss_bytes", m.finalBytes).put("peak_reset", false).put("source", m.memorySource));
    if (m.golden != null) {
      j.put("golden", new JSONObject().put("ok", m.golden.ok).put("max_abs_diff", m.golden.maxAbsDiff)
          .put("cosine", m.golden.cosine).put("tolerance_max_abs", m.golden.toleranceMaxAbs)
          .put("tolerance_min_cosine", m.golden.toleranceMinCosine));
    }
    j.put("mode", "device");
    j.put("estimate", false);
    return j;
  }
}
