package dev.edgeq.core;

import static org.junit.Assert.assertArrayEquals;
import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertTrue;

import java.io.File;
import java.util.Iterator;
import java.util.TreeSet;
import org.json.JSONArray;
import org.json.JSONObject;
import org.junit.Test;

public class ResultsTest {
  private static TreeSet<String> keys(JSONObject o) {
    TreeSet<String> out = new TreeSet<>();
    for (Iterator<String> it = o.keys(); it.hasNext(); ) out.add(it.next());
    return out;
  }

  private static String kind(Object v) {
    if (v instanceof Number) return "number";
    if (v instanceof Boolean) return "bool";
    return v.getClass().getSimpleName();
  }

  @Test
  public void latencyStatsEqualNumpyAndStatistics() throws Exception {
    JSONObject fx = Fixtures.json("stats.json");
    LatencyStats s = LatencyStats.of(Fixtures.doubles(fx.getJSONArray("samples_ms")));
    JSONObject want = fx.getJSONObject("latency_ms");
    assertEquals(want.getDouble("min"), s.min, 1e-12);
    assertEquals(want.getDouble("p50"), s.p50, 1e-9);
    assertEquals(want.getDouble("p90"), s.p90, 1e-9);
    assertEquals(want.getDouble("max"), s.max, 1e-12);
    assertEquals(want.getDouble("mean"), s.mean, 1e-9);
    assertEquals(want.getDouble("stdev"), s.stdev, 1e-9);
  }

  @Test
  public void meanPoolingAndNormalisationEqualTorch() throws Exception {
    JSONObject fx = Fixtures.json("pooling.json");
    float[] pooled = Vectors.meanPool(Fixtures.floats(fx.getJSONArray("hidden")),
        Fixtures.longs(fx.getJSONArray("mask")), fx.getInt("dim"));
    assertArrayEquals(Fixtures.floats(fx.getJSONArray("pooled")), pooled, 1e-5f);
    assertArrayEquals(Fixtures.floats(fx.getJSONArray("normalized")), Vectors.l2Normalize(pooled), 1e-5f);
  }

  @Test
  public void resultsJsonHasTheProfilersShape() throws Exception {
    JSONObject profile = Fixtures.json("profile.json"); // a real `edgeq profile --json` report
    Bundle b = Bundle.read(new File(Fixtures.json("tokenizer_cases.json").getString("bundle_dir")));
    BenchmarkResults.Measured m = new BenchmarkResults.Measured();
    m.runtime = "executorch " + b.runtimeVersion;
    m.threadsUsed = 2;
    m.warmup = 3;
    m.loadMs = 12.5;
    m.samplesMs = new double[] {3.0, 1.0, 2.0, 4.0};
    m.baselineBytes = 1000;
    m.peakBytes = 5000;
    m.finalBytes = 4000;
    float[] expected = b.readFloats(b.goldenOutput);
    m.golden = Vectors.checkGolden(expected, expected, b.toleranceMaxAbs, b.toleranceMinCosine);
    JSONObject r = BenchmarkResults.toJson(b, m);
    assertEquals(keys(profile.getJSONObject("latency_ms")), keys(r.getJSONObject("latency_ms")));
    assertTrue(keys(profile.getJSONObject("threads")).containsAll(keys(r.getJSONObject("threads"))));
    assertTrue(keys(r.getJSONObject("threads")).containsAll(java.util.Arrays.asList("requested", "used", "source")));
    assertTrue(keys(r.getJSONObject("memory")).containsAll(keys(profile.getJSONObject("memory"))));
    for (String k : new String[] {"runner_version", "artifact", "model", "model_file", "format", "runtime", "delegates",
        "inputs", "threads", "warmup", "runs", "load_ms", "latency_ms", "samples_ms", "memory", "mode", "estimate"}) {
      assertTrue("profile lacks " + k, profile.has(k));
      assertEquals(k, kind(profile.get(k)), kind(r.get(k)));
    }
    assertEquals(profile.getJSONArray("inputs").toString(), r.getJSONArray("inputs").toString());
    assertEquals(2.5, r.getJSONObject("latency_ms").getDouble("p50"), 1e-12);
    assertEquals(4, r.getInt("runs"));
    assertEquals(4000, r.getJSONObject("memory").getLong("model_attributable_bytes"));
    assertTrue(r.getJSONObject("golden").getBoolean("ok"));
    JSONArray samples = r.getJSONArray("samples_ms");
    assertEquals(3.0, samples.getDouble(0), 0);
  }
}
