-- The fingerprint of a SKU's terms as loaded (the `fp` of `sku.loaded`), so a restore of
-- Redis from the ledger writes it back and loading the same terms again stays `unchanged`.
-- NULL for SKUs loaded before events carried it.
ALTER TABLE skus ADD COLUMN fingerprint TEXT;
