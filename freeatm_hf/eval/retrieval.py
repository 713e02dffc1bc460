"""BLIP's retrieval protocol: rank by ITC similarity, re-rank the top k with the ITM head, score = ITM logit
(match) + ITC similarity; recall@1/5/10 both ways."""

import torch


@torch.no_grad()
def retrieval_scores(model, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask=None,
                     k_test: int = 128, batch_size: int = 64) -> torch.Tensor:
    """Image × text score matrix. Pairs outside a row's (or column's) ITC top `k_test` get −100, as in BLIP."""
    device = next(model.parameters()).device
    attention_mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
    embeds, img_feats = [], []
    for s in range(0, len(pixel_values), batch_size):
        e = model.image_embeds(pixel_values[s : s + batch_size].to(device))
        embeds.append(e)
        img_feats.append(torch.nn.functional.normalize(model.vision_proj(e[:, 0]), dim=-1))
    embeds, img_feats = torch.cat(embeds), torch.cat(img_feats)
    txt_feats = []
    for s in range(0, len(input_ids), batch_size):
        out = model.text_encoder(input_ids=input_ids[s : s + batch_size].to(device),
                                 attention_mask=attention_mask[s : s + batch_size].to(device)).last_hidden_state
        txt_feats.append(torch.nn.functional.normalize(model.text_proj(out[:, 0]), dim=-1))
    sim = img_feats @ torch.cat(txt_feats).T  # (I, T)
    ids, mask = input_ids.to(device), attention_mask.to(device)
    i2t = torch.full_like(sim, -100.0)
    for i in range(len(sim)):
        top = sim[i].topk(min(k_test, sim.shape[1])).indices
        itm = model.itm_logits(embeds[i : i + 1].expand(len(top), -1, -1), ids[top], mask[top])[:, 1]
        i2t[i, top] = itm + sim[i, top]
    t2i = torch.full_like(sim.T, -100.0)
    for j in range(sim.shape[1]):
        top = sim[:, j].topk(min(k_test, sim.shape[0])).indices
        itm = model.itm_logits(embeds[top], ids[j : j + 1].expand(len(top), -1), mask[j : j + 1].expand(len(top), -1))[:, 1]
        t2i[j, top] = itm + sim[top, j]
    return i2t.cpu(), t2i.cpu()


def recall_at_k(i2t: torch.Tensor, t2i: torch.Tensor, text_to_image: list[int]) -> dict:
    """TR@k from the image→text matrix, IR@k from the text→image matrix (BLIP computes them separately)."""
    from .metrics import load_metric

    metric = load_metric("retrieval_recall")
    refs = [[j for j, im in enumerate(text_to_image) if im == i] for i in range(i2t.shape[0])]
    tr = metric.compute(predictions=i2t.tolist(), references=refs, text_to_image=text_to_image)
    ir = metric.compute(predictions=t2i.T.tolist(), references=refs, text_to_image=text_to_image)
    return {**{k: v for k, v in tr.items() if k.startswith("tr")}, **{k: v for k, v in ir.items() if k.startswith("ir")}}
