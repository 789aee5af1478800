package dev.edgeq.core;

import java.io.File;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import org.json.JSONArray;
import org.json.JSONException;
import org.json.JSONObject;

/** Reference data written by tests/test_android_core.py (Hugging Face, numpy, torch, edgeq). */
final class Fixtures {
  private Fixtures() {}

  static File dir() {
    String d = System.getProperty("edgeq.fixtures");
    if (d == null) throw new IllegalStateException("run with -Dedgeq.fixtures=DIR (tests/test_android_core.py does)");
    return new File(d);
  }

  static JSONObject json(String name) throws IOException, JSONException {
    return new JSONObject(new String(Files.readAllBytes(new File(dir(), name).toPath()), StandardCharsets.UTF_8));
  }

  static long[] longs(JSONArray a) throws JSONException {
    long[] out = new long[a.length()];
    for (int i = 0; i < out.length; i++) out[i] = a.getLong(i);
    return out;
  }

  static float[] floats(JSONArray a) throws JSONException {
    float[] out = new float[a.length()];
    for (int i = 0; i < out.length; i++) out[i] = (float) a.getDouble(i);
    return out;
  }

  static double[] doubles(JSONArray a) throws JSONException {
    double[] out = new double[a.length()];
    for (int i = 0; i < out.length; i++) out[i] = a.getDouble(i);
    return out;
  }
}
