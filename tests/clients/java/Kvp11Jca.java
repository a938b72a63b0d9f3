/*
 * Kvp11Jca — the Java half of tests/clients/java_sunpkcs11.sh: uses libkvp11.so
 * through the JDK's SunPKCS11 provider and the plain JCA API, in one JVM run.
 *
 *   java Kvp11Jca CONFIG PIN OUTDIR DATAFILE [ALIAS:ALGORITHM ...]
 *
 * CONFIG    SunPKCS11 configuration (name = kvp11, library = .../libkvp11.so)
 * PIN       passed to KeyStore.load (C_Login)
 * OUTDIR    receives aliases.txt (sorted aliases with their entry kind),
 *           ALIAS.der (each certificate), ALIAS.ALGORITHM.sig (each signature),
 *           and, when OUTDIR/ALIAS.enc exists for an RSA alias, ALIAS.dec
 *           (RSA/ECB/PKCS1Padding decryption through the provider)
 * Each signature is also verified in Java with the certificate's public key
 * by the JDK's own (software) providers, and must fail over other data.
 * Exit status 0 on success, 1 with a message on the first failure.
 */
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.security.KeyStore;
import java.security.PrivateKey;
import java.security.Provider;
import java.security.Security;
import java.security.Signature;
import java.security.cert.Certificate;
import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import javax.crypto.Cipher;

public final class Kvp11Jca {
    private Kvp11Jca() {
    }

    public static void main(String[] args) throws Exception {
        if (args.length < 4) {
            System.err.println("usage: Kvp11Jca CONFIG PIN OUTDIR DATAFILE [ALIAS:ALGORITHM ...]");
            System.exit(2);
        }
        Provider base = Security.getProvider("SunPKCS11");
        if (base == null) {
            throw new IllegalStateException("no SunPKCS11 provider in this JDK");
        }
        Provider p = base.configure(args[0]);
        Security.addProvider(p);
        char[] pin = args[1].toCharArray();
        Path out = Paths.get(args[2]);
        byte[] data = Files.readAllBytes(Paths.get(args[3]));

        KeyStore ks = KeyStore.getInstance("PKCS11", p);
        ks.load(null, pin);
        List<String> lines = new ArrayList<>();
        for (String a : Collections.list(ks.aliases())) {
            String kind = ks.isKeyEntry(a) ? "key" : (ks.isCertificateEntry(a) ? "cert" : "other");
            lines.add(a + " " + kind);
            Certificate c = ks.getCertificate(a);
            if (c != null) {
                Files.write(out.resolve(a + ".der"), c.getEncoded());
            }
        }
        Collections.sort(lines);
        Files.write(out.resolve("aliases.txt"), lines);
        System.out.println("provider " + p.getName() + ": " + lines.size() + " entries");

        byte[] other = "other data".getBytes("UTF-8");
        for (int i = 4; i < args.length; i++) {
            String[] aa = args[i].split(":", 2);
            String alias = aa[0];
            String alg = aa[1];
            PrivateKey key = (PrivateKey) ks.getKey(alias, null);
            if (key == null) {
                throw new IllegalStateException("no private key for alias " + alias);
            }
            Signature s = Signature.getInstance(alg, p);
            s.initSign(key);
            s.update(data);
            byte[] sig = s.sign();
            Files.write(out.resolve(alias + "." + alg + ".sig"), sig);

            Certificate cert = ks.getCertificate(alias);
            Signature v = Signature.getInstance(alg); /* JDK software provider */
            if (v.getProvider() == p) {
                throw new IllegalStateException("software verification picked " + p.getName());
            }
            v.initVerify(cert.getPublicKey());
            v.update(data);
            if (!v.verify(sig)) {
                throw new IllegalStateException(alias + " " + alg + ": signature does not verify in Java");
            }
            v.initVerify(cert.getPublicKey());
            v.update(other);
            if (v.verify(sig)) {
                throw new IllegalStateException(alias + " " + alg + ": signature verifies over other data");
            }
            System.out.println("signed with " + alias + " (" + alg + "), verified in Java");

            Path enc = out.resolve(alias + ".enc");
            if (Files.exists(enc) && "RSA".equals(key.getAlgorithm())) {
                Cipher c = Cipher.getInstance("RSA/ECB/PKCS1Padding", p);
                c.init(Cipher.DECRYPT_MODE, key);
                Files.write(out.resolve(alias + ".dec"), c.doFinal(Files.readAllBytes(enc)));
                System.out.println("decrypted " + enc.getFileName() + " with " + alias);
            }
        }
    }
}
