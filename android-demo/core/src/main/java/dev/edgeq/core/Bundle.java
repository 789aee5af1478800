package dev.edgeq.core;

import java.io.File;
import java.io.FileInputStream;
import java.io.IOException;
import java.io.InputStream;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.util.ArrayList;
import java.util.Collections;
import java.util.Iterator;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import org.json.JSONArray;
import org.json.JSONException;
import org.json.JSONObject;

/**
 * An edgeq bundle directory: {@code edgeq_bundle.json} (schema v1, written by
 * {@code edgeq bundle}) read into typed fields, its files verified against their sha256,
 * and its golden tensors.
 */
public final class Bundle {
  public static final String BUNDLE_FILE = "edgeq_bundle.json";
  public static final int SCHEMA_VERSION = 1;

  /** Name, shape and dtype of a tensor; for golden tensors also the file holding it. */
  public static final class TensorSpec {
    public final String name;
    public final long[] shape;
    public final String dtype;
    public final String file; // null for model inputs/outputs

    TensorSpec(String name, long[] shape, String dtype, String file) {
      this.name = name;
      this.shape = shape;
      this.dtype = dtype;
      this.file = file;
    }

    public long numel() {
      long n = 1;
      for (long d : shape) n *= d;
      return n;
    }
  }

  /** The tokenizer section (WordPiece fields are null/defaults for other kinds). */
  public static final class TokenizerConfig {
    public String kind = "wordpiece";
    public List<String> files = new ArrayList<>();
    public int maxLength = 128;
    public boolean lowercase = true;
    public boolean stripAccents = true;
    public boolean handleChineseChars = true;
    public boolean cleanText = true;
    public String continuingSubwordPrefix = "##";
    public int maxInputCharsPerWord = 100;
    public int clsId = 101;
    public int sepId = 102;
    public int padId = 0;
    public Integer unkId = null;
  }

  public final File dir;
  public final JSONObject json;
  public final String id;
  public final String modelName;
  public final String task;
  public final String format;
  public final String modelFile;
  public final String runtimeVersion;
  public final int threads;
  public final List<String> delegates;
  public final List<TensorSpec> inputs;
  public final TokenizerConfig tokenizer; // null: the model takes tensors, not text
  public final boolean poolingInModel;
  public final String goldenText; // null when the golden input is not text
  public final List<TensorSpec> goldenInputs;
  public final TensorSpec goldenOutput; // null when the bundle has no golden check
  public final double toleranceMaxAbs;
  public final double toleranceMinCosine;
  public final Map<String, String> sha256; // relative path -> sha256
  public final Map<String, Long> bytes;

  private Bundle(File dir, JSONObject j) throws JSONException, BundleException {
    this.dir = dir;
    this.json = j;
    if (j.getInt("schema_version") != SCHEMA_VERSION) {
      throw new BundleException(BUNDLE_FILE + " has schema version " + j.get("schema_version")
          + "; this app reads version " + SCHEMA_VERSION + " (update the app or re-run edgeq bundle)");
    }
    id = j.getString("id");
    modelName = j.getString("model_name");
    task = j.getString("task");
    format = j.getString("format");
    modelFile = j.getString("model_file");
    runtimeVersion = j.getJSONObject("runtime").getString("version");
    threads = j.optInt("threads", 0);
    delegates = strings(j.getJSONArray("delegates"));
    inputs = specs(j.getJSONArray("inputs"));
    tokenizer = j.isNull("tokenizer") ? null : tokenizer(j.getJSONObject("tokenizer"));
    poolingInModel = j.getJSONObject("postprocess").optBoolean("applied_in_model", true);
    JSONObject golden = j.getJSONObject("golden");
    if (golden.has("output")) {
      goldenText = golden.isNull("text") ? null : golden.getString("text");
      goldenInputs = specs(golden.getJSONArray("inputs"));
      goldenOutput = spec(golden.getJSONObject("output"));
      JSONObject tol = golden.getJSONObject("tolerance");
      toleranceMaxAbs = tol.getDouble("max_abs");
      toleranceMinCosine = tol.getDouble("min_cosine");
    } else {
      goldenText = null;
      goldenInputs = Collections.emptyList();
      goldenOutput = null;
      toleranceMaxAbs = Double.NaN;
      toleranceMinCosine = Double.NaN;
    }
    Map<String, String> sha = new LinkedHashMap<>();
    Map<String, Long> size = new LinkedHashMap<>();
    JSONObject files = j.getJSONObject("files");
    for (Iterator<String> it = files.keys(); it.hasNext(); ) {
      String rel = it.next();
      checkRelative(rel);
      sha.put(rel, files.getJSONObject(rel).getString("sha256"));
      size.put(rel, files.getJSONObject(rel).getLong("bytes"));
    }
    if (!sha.containsKey(modelFile)) throw new BundleException("the model file is not in the bundle's file table");
    sha256 = Collections.unmodifiableMap(sha);
    bytes = Collections.unmodifiableMap(size);
  }

  /** Reads {@code dir/edgeq_bundle.json}; does not check file hashes (see {@link #verify()}). */
  public static Bundle read(File dir) throws BundleException {
    File f = new File(dir, BUNDLE_FILE);
    String text;
    try {
      text = new String(Files.readAllBytes(f.toPath()), StandardCharsets.UTF_8);
    } catch (IOException e) {
      throw new BundleException("cannot read " + f + " (" + e.getMessage() + ")");
    }
    try {
      return new Bundle(dir, new JSONObject(text));
    } catch (JSONException e) {
      throw new BundleException(f + " is not a valid bundle description (" + e.getMessage() + ")");
    }
  }

  /** Every file in the table exists with its recorded size and sha256. */
  public void verify() throws BundleException {
    for (Map.Entry<String, String> e : sha256.entrySet()) {
      File f = new File(dir, e.getKey());
      if (!f.isFile()) throw new BundleException(e.getKey() + " is missing from the bundle");
      if (f.length() != bytes.get(e.getKey()) || !sha256Hex(f).equals(e.getValue())) {
        throw new BundleException(e.getKey() + " does not match its sha256 in " + BUNDLE_FILE + " (corrupt or modified)");
      }
    }
  }

  public File modelPath() {
    return new File(dir, modelFile);
  }

  /** A golden int64 tensor (e.g. input ids), little-endian on disk. */
  public long[] readLongs(TensorSpec spec) throws BundleException {
    ByteBuffer b = read(spec, 8);
    long[] out = new long[(int) spec.numel()];
    b.asLongBuffer().get(out);
    return out;
  }

  /** A golden float32 tensor (e.g. the expected output), little-endian on disk. */
  public float[] readFloats(TensorSpec spec) throws BundleException {
    ByteBuffer b = read(spec, 4);
    float[] out = new float[(int) spec.numel()];
    b.asFloatBuffer().get(out);
    return out;
  }

  private ByteBuffer read(TensorSpec spec, int itemSize) throws BundleException {
    checkRelative(spec.file);
    byte[] data;
    try {
      data = Files.readAllBytes(new File(dir, spec.file).toPath());
    } catch (IOException e) {
      throw new BundleException("cannot read " + spec.file + " (" + e.getMessage() + ")");
    }
    if (data.length != spec.numel() * itemSize) {
      throw new BundleException(spec.file + " does not hold a " + spec.dtype + " tensor of its shape");
    }
    return ByteBuffer.wrap(data).order(ByteOrder.LITTLE_ENDIAN);
  }

  public static String sha256Hex(File f) throws BundleException {
    try (InputStream in = new FileInputStream(f)) {
      MessageDigest md = MessageDigest.getInstance("SHA-256");
      byte[] buf = new byte[1 << 16];
      int n;
      while ((n = in.read(buf)) > 0) md.update(buf, 0, n);
      StringBuilder sb = new StringBuilder();
      for (byte x : md.digest()) sb.append(String.format("%02x", x));
      return sb.toString();
    } catch (IOException | NoSuchAlgorithmException e) {
      throw new BundleException("cannot hash " + f + " (" + e.getMessage() + ")");
    }
  }

  private static void checkRelative(String rel) throws BundleException {
    if (rel.isEmpty() || rel.startsWith("/") || rel.contains("\\")) throw new BundleException("bad path in bundle: " + rel);
    for (String part : rel.split("/")) {
      if (part.isEmpty() || part.equals("..")) throw new BundleException("path outside the bundle: " + rel);
    }
  }

  private static List<String> strings(JSONArray a) throws JSONException {
    List<String> out = new ArrayList<>();
    for (int i = 0; i < a.length(); i++) out.add(a.getString(i));
    return out;
  }

  private static List<TensorSpec> specs(JSONArray a) throws JSONException {
    List<TensorSpec> out = new ArrayList<>();
    for (int i = 0; i < a.length(); i++) out.add(spec(a.getJSONObject(i)));
    return out;
  }

  private static TensorSpec spec(JSONObject o) throws JSONException {
    JSONArray s = o.getJSONArray("shape");
    long[] shape = new long[s.length()];
    for (int i = 0; i < shape.length; i++) shape[i] = s.getLong(i);
    return new TensorSpec(o.getString("name"), shape, o.getString("dtype"), o.has("file") ? o.getString("file") : null);
  }

  private static TokenizerConfig tokenizer(JSONObject o) throws JSONException {
    TokenizerConfig t = new TokenizerConfig();
    t.kind = o.getString("kind");
    t.files = strings(o.getJSONArray("files"));
    t.maxLength = o.getInt("max_length");
    t.lowercase = o.optBoolean("lowercase", t.lowercase);
    t.stripAccents = o.optBoolean("strip_accents", t.stripAccents);
    t.handleChineseChars = o.optBoolean("handle_chinese_chars", t.handleChineseChars);
    t.cleanText = o.optBoolean("clean_text", t.cleanText);
    t.continuingSubwordPrefix = o.optString("continuing_subword_prefix", t.continuingSubwordPrefix);
    t.maxInputCharsPerWord = o.optInt("max_input_chars_per_word", t.maxInputCharsPerWord);
    JSONObject ids = o.optJSONObject("special_ids");
    if (ids != null) {
      t.clsId = ids.optInt("cls", t.clsId);
      t.sepId = ids.optInt("sep", t.sepId);
      t.padId = ids.optInt("pad", t.padId);
      if (ids.has("unk") && !ids.isNull("unk")) t.unkId = ids.getInt("unk");
    }
    return t;
  }
}
