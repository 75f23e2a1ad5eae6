// Translation unit B of the link test: the same headers again. A non-inline definition in any
// header would make this program fail to link with a duplicate symbol.
#include <segml/segformer.hpp>
#include <segml/models/clip/tokenization_clip.hpp>
#ifdef SEGML_HAVE_MPI
#include <segml/distributed/mpi.hpp>  // the one header that needs MPI
#endif

int tu_b_entry() { return static_cast<int>(segml::Tensor<double>::zeros({3, 2}).numel()); }
