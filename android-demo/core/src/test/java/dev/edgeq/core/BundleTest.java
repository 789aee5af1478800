package dev.edgeq.core;

import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertFalse;
import static org.junit.Assert.assertNotNull;
import static org.junit.Assert.assertTrue;
import static org.junit.Assert.fail;

import java.io.File;
import java.io.IOException;
import java.io.RandomAccessFile;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.util.stream.Stream;
import org.junit.Rule;
import org.junit.Test;
import org.junit.rules.TemporaryFolder;

public class BundleTest {
  @Rule public TemporaryFolder tmp = new TemporaryFolder();

  private static Bundle bundle() throws Exception {
    return Bundle.read(new File(Fixtures.json("tokenizer_cases.json").getString("bundle_dir")));
  }

  private File copy(File src) throws IOException {
    Path dst = tmp.newFolder("bundle").toPath();
    try (Stream<Path> walk = Files.walk(src.toPath())) {
      for (Path p : (Iterable<Path>) walk::iterator) {
        Path to = dst.resolve(src.toPath().relativize(p).toString());
        if (Files.isDirectory(p)) Files.createDirectories(to);
        else Files.copy(p, to, StandardCopyOption.REPLACE_EXISTING);
      }
    }
    return dst.toFile();
  }

  @Test
  public void readsAndVerifiesARealBundle() throws Exception {
    Bundle b = bundle();
    b.verify();
    assertEquals("executorch", b.format);
    assertEquals("model.pte", b.modelFile);
    assertTrue(b.sha256.containsKey("model.pte") && b.sha256.containsKey("vocab.txt"));
    assertEquals(Bundle.sha256Hex(b.modelPath()), b.sha256.get("model.pte"));
    assertNotNull(b.goldenOutput);
    assertTrue(b.poolingInModel);
  }

  @Test
  public void rejectsATamperedFile() throws Exception {
    File dir = copy(bundle().dir);
    try (RandomAccessFile f = new RandomAccessFile(new File(dir, "model.pte"), "rw")) {
      f.seek(f.length() / 2);
      int x = f.read();
      f.seek(f.length() / 2);
      f.write(x ^ 0x01);
    }
    Bundle b = Bundle.read(dir);
    try {
      b.verify();
      fail("a modified model.pte passed verification");
    } catch (BundleException e) {
      assertTrue(e.getMessage(), e.getMessage().contains("model.pte does not match its sha256"));
    }
  }

  @Test
  public void rejectsAMissingFileAndABadDescription() throws Exception {
    File dir = copy(bundle().dir);
    Files.delete(new File(dir, "vocab.txt").toPath());
    try {
      Bundle.read(dir).verify();
      fail("a missing vocab.txt passed verification");
    } catch (BundleException e) {
      assertTrue(e.getMessage(), e.getMessage().contains("vocab.txt is missing"));
    }
    Files.write(new File(dir, Bundle.BUNDLE_FILE).toPath(), "{\"schema_version\": 2}".getBytes("UTF-8"));
    try {
      Bundle.read(dir);
      fail("schema version 2 was accepted");
    } catch (BundleException e) {
      assertTrue(e.getMessage(), e.getMessage().contains("schema version"));
    }
  }

  @Test
  public void goldenCheckAcceptsTheExpectedOutputAndRejectsAnotherOne() throws Exception {
    Bundle b = bundle();
    float[] expected = b.readFloats(b.goldenOutput);
    assertTrue(Vectors.checkGolden(expected.clone(), expected, b.toleranceMaxAbs, b.toleranceMinCosine).ok);
    float[] off = expected.clone();
    off[0] += (float) (2 * b.toleranceMaxAbs);
    Vectors.GoldenResult r = Vectors.checkGolden(off, expected, b.toleranceMaxAbs, b.toleranceMinCosine);
    assertFalse(r.ok);
    assertEquals(2 * b.toleranceMaxAbs, r.maxAbsDiff, 1e-6);
  }
}
