// Translation unit B of the link test: the same headers again. A non-inline definition in any
// header would make this program fail to link with a duplicate symbol.
#include <segml/segformer.hpp>
#include <segml/models/clip/tokenization_clip.hpp>

int tu_b_entry() { return static_cast<int>(segml::Tensor<double>::zeros({3, 2}).numel()); }
